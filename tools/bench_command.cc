// `xkv bench <what>`: benchmarks. `cpu` compares the CPU engine against llama.cpp.
#include <cstdio>
#include <string>

#include "tools/commands.h"

namespace xkv {

int RunBench(int argc, char** argv) {
  std::fprintf(stderr, "xkv bench: not yet available\n");
  return 2;
}

}  // namespace xkv
