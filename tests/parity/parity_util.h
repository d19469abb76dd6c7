// Helpers of the parity tests: environment variables and the hex strings of the reference files.
#ifndef XKV_TESTS_PARITY_PARITY_UTIL_H_
#define XKV_TESTS_PARITY_PARITY_UTIL_H_

#include <cstdlib>
#include <string>

namespace xkv {

inline std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// "48656c6c6f" -> "Hello".
inline std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

}  // namespace xkv

#endif  // XKV_TESTS_PARITY_PARITY_UTIL_H_
