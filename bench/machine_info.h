// Facts about the machine and the scripts venv that benchmark reports and commands share.
#ifndef XKV_BENCH_MACHINE_INFO_H_
#define XKV_BENCH_MACHINE_INFO_H_

#include <string>

namespace xkv {

// The CPU's model name from /proc/cpuinfo, or "unknown CPU".
std::string CpuModel();

// The scripts venv's python: $XKV_CACHE/venv/bin/python, else ~/.cache/xkv/venv/bin/python (the
// venv `scripts/setup --test` creates).
std::string VenvPython();

}  // namespace xkv

#endif  // XKV_BENCH_MACHINE_INFO_H_
