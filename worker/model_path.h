// Where a worker may read models from: LoadStage's model_path must name a GGUF file inside the
// worker's configured model directory (--model-dir). Nothing outside it is opened, and no error
// tells a caller whether a path outside it exists or quotes any file's contents.
#ifndef XKV_WORKER_MODEL_PATH_H_
#define XKV_WORKER_MODEL_PATH_H_

#include <string>

#include "absl/status/statusor.h"

namespace xkv {

// The canonical path of `model_path` (absolute, or relative to `model_dir`) when it is a regular
// GGUF file inside `model_dir` (after resolving symbolic links). INVALID_ARGUMENT when the path is
// outside the directory, has "." / ".." components or is not a GGUF file; NOT_FOUND when it names
// nothing inside the directory; FAILED_PRECONDITION when `model_dir` is empty or not a directory.
absl::StatusOr<std::string> ResolveModelPath(const std::string& model_dir,
                                             const std::string& model_path);

}  // namespace xkv

#endif  // XKV_WORKER_MODEL_PATH_H_
