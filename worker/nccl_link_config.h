// The NCCL data plane's part of LoadStage (architecture.md §1): which communicator a worker
// joins (the coordinator's NCCL unique id, rank = stage index, world size = number of stages) and
// on which CUDA device. Plain C++ (no CUDA, no NCCL): it is validated the same way in every build;
// worker/nccl/nccl_stage_link.h builds the link from it in builds with NCCL.
#ifndef XKV_WORKER_NCCL_LINK_CONFIG_H_
#define XKV_WORKER_NCCL_LINK_CONFIG_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "xkv/v1/worker.pb.h"

namespace xkv {

// Bytes of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES; checked against nccl.h where it is included).
inline constexpr size_t kNcclUniqueIdBytes = 128;

struct NcclLinkConfig {
  std::string unique_id;  // kNcclUniqueIdBytes raw bytes from ncclGetUniqueId
  int rank = 0;        // this stage's rank = stage index; sends to rank + 1, receives from rank - 1
  int world_size = 1;  // ranks = pipeline stages
  int device = 0;      // CUDA device ordinal of this worker ("cuda:N")
};

// True when the request asks for the NCCL data plane: link_kind NCCL or an NCCL id present.
bool WantsNcclLink(const xkv::v1::LoadStageRequest& request);

// "cuda:N" → N (N >= 0). INVALID_ARGUMENT for anything else ("cpu", "cuda", "cuda:x", "cuda:-1").
absl::StatusOr<int> ParseCudaDevice(absl::string_view device);

// The NCCL fields of `request`, checked: an id of exactly kNcclUniqueIdBytes, 1 <= world size,
// 0 <= rank < world size, rank == stage_index, world size == num_stages (when num_stages is set),
// link_kind NCCL or unspecified, and a CUDA `device` (the worker's). INVALID_ARGUMENT naming the
// field otherwise.
absl::StatusOr<NcclLinkConfig> NcclLinkConfigFromProto(const xkv::v1::LoadStageRequest& request,
                                                       absl::string_view device);

}  // namespace xkv

#endif  // XKV_WORKER_NCCL_LINK_CONFIG_H_
