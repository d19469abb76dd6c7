#include "coordinator/data_plane.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {

absl::StatusOr<DataPlane> ParseDataPlane(absl::string_view name) {
  if (name == "grpc") return DataPlane::kGrpc;
  if (name == "nccl") return DataPlane::kNccl;
  return absl::InvalidArgumentError(
      absl::StrCat("data plane '", name, "' is not one of \"grpc\", \"nccl\""));
}

absl::Status ApplyDataPlane(absl::string_view name, NcclUniqueIdSource nccl,
                            CoordinatorOptions* options) {
  ASSIGN_OR_RETURN(const DataPlane plane, ParseDataPlane(name));
  if (plane == DataPlane::kGrpc) {
    options->nccl_unique_id_source = nullptr;
    return absl::OkStatus();
  }
  if (!nccl) {
    return absl::FailedPreconditionError(
        "the NCCL data plane needs an xkv built with CUDA and NCCL, and this one has neither "
        "(use --data-plane=grpc)");
  }
  options->nccl_unique_id_source = std::move(nccl);
  return absl::OkStatus();
}

}  // namespace xkv
