#include "tools/flag_set.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xkv {

FlagSet::FlagSet(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagSet::String(const std::string& name, std::string* value, const std::string& help) {
  flags_.push_back({name, Kind::kString, value, help, value->empty() ? "" : "\"" + *value + "\""});
}

void FlagSet::Int(const std::string& name, int64_t* value, const std::string& help) {
  flags_.push_back({name, Kind::kInt, value, help, absl::StrCat(*value)});
}

void FlagSet::Double(const std::string& name, double* value, const std::string& help) {
  flags_.push_back({name, Kind::kDouble, value, help, absl::StrCat(*value)});
}

void FlagSet::Bool(const std::string& name, bool* value, const std::string& help) {
  flags_.push_back({name, Kind::kBool, value, help, *value ? "true" : "false"});
}

FlagSet::Flag* FlagSet::Find(const std::string& name) {
  for (Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool FlagSet::WasSet(const std::string& name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.set;
  }
  return false;
}

absl::Status FlagSet::Assign(Flag& flag, const std::string& text) {
  auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s: '%s' is not %s", flag.name, text, what));
  };
  switch (flag.kind) {
    case Kind::kString:
      *static_cast<std::string*>(flag.value) = text;
      break;
    case Kind::kInt:
      if (!absl::SimpleAtoi(text, static_cast<int64_t*>(flag.value))) return bad("an integer");
      break;
    case Kind::kDouble: {
      double d;
      if (!absl::SimpleAtod(text, &d) || std::isnan(d)) return bad("a number");
      *static_cast<double*>(flag.value) = d;
      break;
    }
    case Kind::kBool: {
      bool b;
      if (!absl::SimpleAtob(text, &b)) return bad("true or false");
      *static_cast<bool*>(flag.value) = b;
      break;
    }
  }
  flag.set = true;
  return absl::OkStatus();
}

absl::Status FlagSet::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unexpected argument '%s': xkv %s takes only --flags (quote a value with spaces, "
          "see xkv %s --help)",
          arg, command_, command_));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Flag* flag = Find(name);
    if (flag == nullptr && !has_value && name.rfind("no", 0) == 0) {
      Flag* negated = Find(name.substr(2));
      if (negated != nullptr && negated->kind == Kind::kBool) {
        *static_cast<bool*>(negated->value) = false;
        negated->set = true;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown flag --%s for 'xkv %s' (see xkv %s --help)", name, command_, command_));
    }
    if (!has_value) {
      if (flag->kind == Kind::kBool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrFormat("--%s needs a value", name));
      }
    }
    absl::Status s = Assign(*flag, value);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::optional<int> FlagSet::ParseOrExitCode(int argc, char** argv, int first) {
  if (absl::Status s = Parse(argc, argv, first); !s.ok()) {
    std::fprintf(stderr, "xkv %s: %s\n", command_.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  if (help_requested_) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  return std::nullopt;
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrFormat("usage: xkv %s [flags]\n\n%s\n\nflags:\n", command_, summary_);
  for (const Flag& f : flags_) {
    std::string lhs = "  --" + f.name;
    if (f.kind != Kind::kBool) lhs += f.kind == Kind::kString ? " TEXT" : " N";
    absl::StrAppendFormat(&out, "%-28s %s", lhs, f.help);
    if (!f.default_text.empty()) absl::StrAppend(&out, " (default ", f.default_text, ")");
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppendFormat(&out, "%-28s %s\n", "  --help", "show this help");
  return out;
}

}  // namespace xkv
