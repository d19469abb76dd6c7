// A per-subcommand flag parser: each `xkv <command>` declares its own flags with help text, so
// `xkv <command> --help` lists exactly the flags that command takes.
#ifndef XKV_TOOLS_FLAG_SET_H_
#define XKV_TOOLS_FLAG_SET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace xkv {

class FlagSet {
 public:
  FlagSet(std::string command, std::string summary);

  void String(const std::string& name, std::string* value, const std::string& help);
  void Int(const std::string& name, int64_t* value, const std::string& help);
  void Double(const std::string& name, double* value, const std::string& help);
  // `--name`, `--name=true|false`, `--noname`.
  void Bool(const std::string& name, bool* value, const std::string& help);

  // Parses argv[first..argc). INVALID_ARGUMENT on an unknown flag, a missing value, a value that
  // does not parse or a word that is not a flag (no command takes positional arguments: a stray
  // word is most often the rest of an unquoted value). Sets help_requested() on --help / -h.
  absl::Status Parse(int argc, char** argv, int first);
  // Every command's prologue: Parse, then nullopt when the command goes on, or its exit code:
  // 2 after one line "xkv <command>: <error>" on stderr, 0 after the usage on stdout for --help.
  std::optional<int> ParseOrExitCode(int argc, char** argv, int first);
  bool help_requested() const { return help_requested_; }
  bool WasSet(const std::string& name) const;
  std::string Usage() const;

 private:
  enum class Kind { kString, kInt, kDouble, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* value;
    std::string help;
    std::string default_text;
    bool set = false;
  };
  Flag* Find(const std::string& name);
  absl::Status Assign(Flag& flag, const std::string& text);

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace xkv

#endif  // XKV_TOOLS_FLAG_SET_H_
