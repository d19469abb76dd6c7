#include "bench/machine_info.h"

#include <cstdlib>
#include <fstream>

namespace xkv {

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown CPU";
}

std::string VenvPython() {
  const char* cache = std::getenv("XKV_CACHE");
  const char* home = std::getenv("HOME");
  const std::string dir =
      cache != nullptr ? std::string(cache) : std::string(home ? home : "") + "/.cache/xkv";
  return dir + "/venv/bin/python";
}

}  // namespace xkv
