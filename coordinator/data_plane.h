// The data plane between worker processes, as chosen by `xkv coordinator --data-plane`: gRPC
// (PushHidden between workers; any device) or NCCL (ncclSend/ncclRecv between CUDA workers, one
// communicator whose unique id the coordinator makes per (re)load of stages; architecture.md §1).
#ifndef XKV_COORDINATOR_DATA_PLANE_H_
#define XKV_COORDINATOR_DATA_PLANE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/coordinator.h"

namespace xkv {

enum class DataPlane { kGrpc, kNccl };

// A fresh NCCL unique id (128 raw bytes) per call.
using NcclUniqueIdSource = std::function<absl::StatusOr<std::string>()>;

// "grpc" | "nccl" (exactly). INVALID_ARGUMENT otherwise.
absl::StatusOr<DataPlane> ParseDataPlane(absl::string_view name);

// Sets options->nccl_unique_id_source for the data plane `name`: cleared for "grpc", `nccl` for
// "nccl". FAILED_PRECONDITION when "nccl" is asked but `nccl` is null (a build without NCCL).
absl::Status ApplyDataPlane(absl::string_view name, NcclUniqueIdSource nccl,
                            CoordinatorOptions* options);

}  // namespace xkv

#endif  // XKV_COORDINATOR_DATA_PLANE_H_
