#include "worker/nccl_link_config.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace xkv {

bool WantsNcclLink(const xkv::v1::LoadStageRequest& request) {
  return request.link_kind() == xkv::v1::LINK_KIND_NCCL || !request.nccl_unique_id().empty();
}

absl::StatusOr<int> ParseCudaDevice(absl::string_view device) {
  constexpr absl::string_view kPrefix = "cuda:";
  const absl::string_view digits =
      absl::StartsWith(device, kPrefix) ? device.substr(kPrefix.size()) : "";
  int ordinal = -1;
  if (digits.empty() || digits.size() > 6 ||
      !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &ordinal)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", device, "' is not a CUDA device (want cuda:N)"));
  }
  return ordinal;
}

absl::StatusOr<NcclLinkConfig> NcclLinkConfigFromProto(const xkv::v1::LoadStageRequest& r,
                                                       absl::string_view device) {
  if (r.link_kind() != xkv::v1::LINK_KIND_NCCL && r.link_kind() != xkv::v1::LINK_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl_unique_id is set but link_kind is ", r.link_kind(), ", not NCCL"));
  }
  if (r.nccl_unique_id().size() != kNcclUniqueIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("nccl_unique_id has ", r.nccl_unique_id().size(),
                                                   " bytes, want ", kNcclUniqueIdBytes));
  }
  if (r.nccl_world_size() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl_world_size ", r.nccl_world_size(), " must be >= 1"));
  }
  if (r.nccl_rank() < 0 || r.nccl_rank() >= r.nccl_world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl_rank ", r.nccl_rank(), " is outside [0, ", r.nccl_world_size(), ")"));
  }
  if (r.nccl_rank() != r.stage_index()) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl_rank ", r.nccl_rank(), " must equal stage_index ", r.stage_index()));
  }
  if (r.num_stages() > 0 && r.nccl_world_size() != r.num_stages()) {
    return absl::InvalidArgumentError(absl::StrCat("nccl_world_size ", r.nccl_world_size(),
                                                   " must equal num_stages ", r.num_stages()));
  }
  absl::StatusOr<int> ordinal = ParseCudaDevice(device);
  if (!ordinal.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the NCCL data plane needs a CUDA worker (xkv worker --device cuda:N): ",
                     ordinal.status().message()));
  }
  NcclLinkConfig c;
  c.unique_id = r.nccl_unique_id();
  c.rank = r.nccl_rank();
  c.world_size = r.nccl_world_size();
  c.device = *ordinal;
  return c;
}

}  // namespace xkv
