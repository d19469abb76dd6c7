// Comparison of secrets (bearer tokens, API keys) that does not leak where they differ.
#ifndef XKV_BASE_SAME_SECRET_H_
#define XKV_BASE_SAME_SECRET_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace xkv {

// True when `given` equals `key`, in time independent of where they differ (only the length may
// leak).
inline bool SameSecret(absl::string_view given, absl::string_view key) {
  if (given.size() != key.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < key.size(); ++i) diff |= given[i] ^ key[i];
  return diff == 0;
}

}  // namespace xkv

#endif  // XKV_BASE_SAME_SECRET_H_
