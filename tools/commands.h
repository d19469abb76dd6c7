// Entry points of the `xkv` subcommands; each parses its own flags (tools/flag_set.h).
#ifndef XKV_TOOLS_COMMANDS_H_
#define XKV_TOOLS_COMMANDS_H_

namespace xkv {

// argv[0] is "xkv", argv[1] the subcommand; flags start at argv[2]. Return the process exit code.
int RunGenerate(int argc, char** argv);
int RunBench(int argc, char** argv);
int RunEval(int argc, char** argv);
int RunCalibrate(int argc, char** argv);
int RunWorker(int argc, char** argv);
int RunServe(int argc, char** argv);
int RunCoordinator(int argc, char** argv);
int RunClient(int argc, char** argv);

}  // namespace xkv

#endif  // XKV_TOOLS_COMMANDS_H_
