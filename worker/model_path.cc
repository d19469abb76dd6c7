#include "worker/model_path.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace xkv {
namespace {

constexpr size_t kMaxModelPathBytes = 4096;

// realpath(3), or "" when the path does not resolve.
std::string RealPath(const std::string& path) {
  std::unique_ptr<char, decltype(&free)> resolved(realpath(path.c_str(), nullptr), &free);
  return resolved == nullptr ? "" : std::string(resolved.get());
}

bool Inside(const std::string& dir, const std::string& path) {
  return absl::StartsWith(path, dir == "/" ? dir : dir + "/") && path.size() > dir.size() + 1;
}

// `dir` made absolute (against the working directory) without resolving links, no trailing '/'.
std::string AbsoluteDir(std::string dir) {
  if (dir[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) dir = absl::StrCat(cwd, "/", dir);
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

// The first four bytes of a GGUF file are "GGUF".
bool HasGgufMagic(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[4] = {};
  const ssize_t n = read(fd, magic, sizeof(magic));
  close(fd);
  return n == 4 && magic[0] == 'G' && magic[1] == 'G' && magic[2] == 'U' && magic[3] == 'F';
}

}  // namespace

absl::StatusOr<std::string> ResolveModelPath(const std::string& model_dir,
                                             const std::string& model_path) {
  if (model_dir.empty()) {
    return absl::FailedPreconditionError(
        "worker: started without --model-dir, so it loads no model (start it with "
        "--model-dir=DIR, the folder holding the GGUF files)");
  }
  const std::string dir = RealPath(model_dir);
  struct stat st;
  if (dir.empty() || stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker: --model-dir ", model_dir, " is not a readable directory"));
  }
  const std::string outside =
      absl::StrCat("model_path must name a GGUF file inside the worker's --model-dir ", model_dir);
  if (model_path.empty() || model_path.size() > kMaxModelPathBytes ||
      model_path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(outside, " (got ", model_path.size(), " bytes)"));
  }
  for (absl::string_view part : absl::StrSplit(model_path, '/')) {
    if (part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(outside, "; '", model_path, "' has a . or .. component"));
    }
  }
  const std::string joined = model_path[0] == '/' ? model_path : dir + "/" + model_path;
  // Lexically first: a path outside the directory is refused before anything is looked up, so
  // the answer never tells whether it exists.
  const std::string lexical_dir = AbsoluteDir(model_dir);
  if (!Inside(dir, joined) && !Inside(lexical_dir, joined)) {
    return absl::InvalidArgumentError(absl::StrCat(outside, "; '", model_path, "' is not"));
  }
  const std::string real = RealPath(joined);
  if (real.empty()) {
    return absl::NotFoundError(
        absl::StrCat("model_path '", model_path, "' does not exist in --model-dir ", model_dir));
  }
  // Symbolic links inside the directory may not lead out of it.
  if (!Inside(dir, real)) {
    return absl::InvalidArgumentError(absl::StrCat(outside, "; '", model_path, "' is not"));
  }
  if (stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !HasGgufMagic(real)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model_path '", model_path, "' is not a GGUF model file"));
  }
  return real;
}

}  // namespace xkv
