// A per-subcommand flag parser: each `xkv <command>` declares its own flags with help text, so
// `xkv <command> --help` lists exactly the flags that command takes.
#ifndef XKV_TOOLS_FLAG_SET_H_
#define XKV_TOOLS_FLAG_SET_H_

#include <cstdint>
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

  // Parses argv[first..argc). INVALID_ARGUMENT on an unknown flag, a missing value or a value that
  // does not parse. Sets help_requested() on --help / -h. Positional arguments are collected.
  absl::Status Parse(int argc, char** argv, int first);
  bool help_requested() const { return help_requested_; }
  bool WasSet(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
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
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace xkv

#endif  // XKV_TOOLS_FLAG_SET_H_
