// The `xkv` binary: one subcommand per product capability.
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: xkv <command> [flags]\n"
    "\n"
    "xkv serves long-context LLMs with a per-layer KV-cache size (XKV).\n"
    "\n"
    "commands:\n"
    "  generate   generate text from a GGUF model on the CPU engine, streaming to stdout\n"
    "  bench      benchmarks (`xkv bench cpu`: prefill/decode speed against llama.cpp)\n"
    "\n"
    "`xkv <command> --help` describes each command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command == "generate") return xkv::RunGenerate(argc, argv);
  if (command == "bench") return xkv::RunBench(argc, argv);
  std::fprintf(stderr, "xkv: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
