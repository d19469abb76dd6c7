#include "worker/stage_options.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "allocator/kv_spec.h"
#include "base/status_macros.h"
#include "worker/host_memory.h"
#include "worker/model_path.h"
#include "worker/stage_engine_factory.h"

namespace xkv {
namespace {

absl::StatusOr<ScoreGranularity> GranularityFromProto(xkv::v1::ScoreGranularity g) {
  switch (g) {
    case xkv::v1::SCORE_GRANULARITY_UNSPECIFIED:
    case xkv::v1::SCORE_GRANULARITY_KV_HEAD:
      return ScoreGranularity::kKvHead;
    case xkv::v1::SCORE_GRANULARITY_QUERY_HEAD:
      return ScoreGranularity::kQueryHead;
    default:
      return absl::InvalidArgumentError(absl::StrCat("importance.granularity ", g, " unknown"));
  }
}

// a + b, or INT64_MAX when it overflows (a, b >= 0): a bound check then refuses it.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  return b > std::numeric_limits<int64_t>::max() - a ? std::numeric_limits<int64_t>::max() : a + b;
}

// The stage's pool in blocks, from the first capacity option that is set (StageOptions).
absl::StatusOr<int64_t> RawCapacity(const StageOptions& o, int num_layers, int64_t block_bytes) {
  if (o.kv_capacity_blocks < 0 || o.kv_capacity_bytes < 0) {
    return absl::InvalidArgumentError("stage: negative KV capacity");
  }
  int64_t total = 0;
  if (!o.layer_capacity_blocks.empty()) {
    if (static_cast<int>(o.layer_capacity_blocks.size()) != num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("stage: ", o.layer_capacity_blocks.size(),
                                                     " layer capacities for ", num_layers,
                                                     " layers"));
    }
    for (int64_t c : o.layer_capacity_blocks) {
      if (c < 0) return absl::InvalidArgumentError("stage: negative KV capacity");
      total = SaturatingAdd(total, c);
    }
    return total;
  }
  if (o.kv_capacity_bytes > 0 && o.kv_capacity_blocks == 0) {
    return o.kv_capacity_bytes / block_bytes;
  }
  const int64_t per_layer =
      o.kv_capacity_blocks > 0 ? o.kv_capacity_blocks : kDefaultBlocksPerLayer;
  for (int l = 0; l < num_layers; ++l) total = SaturatingAdd(total, per_layer);
  return total;
}

// The stage's pool within o.max_kv_bytes.
absl::Status CheckPoolBytes(const StageOptions& o, int64_t capacity, int num_layers,
                            int64_t block_bytes) {
  if (o.max_kv_bytes <= 0 || block_bytes <= 0) return absl::OkStatus();
  const int64_t max_blocks = o.max_kv_bytes / block_bytes;
  if (capacity > max_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "stage: the KV pool asks for more than ", max_blocks, " blocks of ", block_bytes,
        " bytes for the stage's ", num_layers, " layers, beyond this worker's bound of ",
        o.max_kv_bytes, " bytes (its memory, or --max-kv-bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StageOptions> StageOptionsFromRequest(const xkv::v1::LoadStageRequest& r,
                                                     const std::string& device, int num_threads) {
  if (r.model_path().empty()) return absl::InvalidArgumentError("model_path is empty");
  if (!r.device().empty() && r.device() != device) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", r.device(), "' but this worker runs on '", device, "'"));
  }
  if (r.layer_begin() < 0 || r.layer_end() <= r.layer_begin()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer range [", r.layer_begin(), ", ", r.layer_end(), ") is empty"));
  }
  if (r.is_first() != (r.layer_begin() == 0)) {
    return absl::InvalidArgumentError("is_first must equal layer_begin == 0");
  }
  StageOptions o;
  o.model_path = r.model_path();
  o.layer_begin = r.layer_begin();
  o.layer_end = r.layer_end();
  o.stage_index = r.stage_index();
  o.device = device;
  o.num_threads = num_threads;
  if (r.numerics() == "exact") {
    o.numerics = Numerics::kExact;
  } else if (r.numerics().empty() || r.numerics() == "ggml") {
    o.numerics = Numerics::kGgml;
  } else if (r.numerics() == "bf16") {
    o.numerics = Numerics::kBf16;
  } else {
    return absl::InvalidArgumentError("numerics '" + r.numerics() +
                                      "' is not one of \"ggml\", \"exact\", \"bf16\"");
  }
  RETURN_IF_ERROR(CheckRange("block_tokens", r.block_tokens(), 0, kMaxBlockTokens, "0: 16"));
  o.block_tokens = r.block_tokens() > 0 ? r.block_tokens() : 16;
  RETURN_IF_ERROR(CheckRange("kv_capacity_blocks", r.kv_capacity_blocks(), 0, kMaxCapacityBlocks));
  RETURN_IF_ERROR(CheckRange("kv_capacity_bytes", r.kv_capacity_bytes(), 0, kMaxCapacityBytes));
  if (r.layer_capacity_blocks_size() != 0 &&
      r.layer_capacity_blocks_size() != r.layer_end() - r.layer_begin()) {
    return absl::InvalidArgumentError(absl::StrCat("layer_capacity_blocks has ",
                                                   r.layer_capacity_blocks_size(), " entries for ",
                                                   r.layer_end() - r.layer_begin(), " layers"));
  }
  for (int i = 0; i < r.layer_capacity_blocks_size(); ++i) {
    RETURN_IF_ERROR(CheckRange(absl::StrCat("layer_capacity_blocks[", i, "]"),
                               r.layer_capacity_blocks(i), 0, kMaxCapacityBlocks));
  }
  o.layer_capacity_blocks.assign(r.layer_capacity_blocks().begin(),
                                 r.layer_capacity_blocks().end());
  o.kv_capacity_blocks = r.kv_capacity_blocks();
  o.kv_capacity_bytes = r.kv_capacity_bytes();
  o.per_head_tables = r.per_head_tables();
  if (r.num_stages() != 0 || r.stage_index() != 0) {
    // Every stage holds at least one layer: stage_index <= layer_begin.
    RETURN_IF_ERROR(CheckRange("num_stages", r.num_stages(), 1, kMaxStages));
    RETURN_IF_ERROR(CheckRange("stage_index", r.stage_index(), 0,
                               std::min(r.num_stages() - 1, r.layer_begin()),
                               "below num_stages and at most layer_begin"));
  }
  RETURN_IF_ERROR(CheckRange("importance.window", r.importance().window(), 0, kMaxImportanceWindow,
                             "0: default"));
  if (r.importance().pool_kernel() != 0) {  // 0: default
    RETURN_IF_ERROR(ValidatePoolKernel(r.importance().pool_kernel(), "importance.pool_kernel"));
  }
  if (r.importance().window() > 0) o.importance.window = r.importance().window();
  if (r.importance().pool_kernel() > 0) o.importance.pool_kernel = r.importance().pool_kernel();
  ASSIGN_OR_RETURN(o.importance.granularity, GranularityFromProto(r.importance().granularity()));
  RETURN_IF_ERROR(CheckLinkTimeout(r.link_timeout_ms()));
  if (r.link_timeout_ms() > 0) o.link_timeout = absl::Milliseconds(r.link_timeout_ms());
  return o;
}

absl::Status ApplyWorkerLimits(const WorkerLimits& limits, StageOptions* options) {
  ASSIGN_OR_RETURN(options->model_path, ResolveModelPath(limits.model_dir, options->model_path));
  // Unset: the host's memory bounds a CPU stage's pool; a CUDA engine bounds its own on the device.
  ASSIGN_OR_RETURN(const int device, ParseStageDevice(options->device));
  options->max_kv_bytes = limits.max_kv_bytes > 0 ? limits.max_kv_bytes
                          : device < 0            ? HostMemoryBytes()
                                                  : 0;
  options->max_step_tokens = limits.max_step_tokens;
  return CheckStageKvPool(*options);
}

absl::StatusOr<int64_t> KvPoolCapacity(const StageOptions& o, int num_layers, int64_t block_bytes) {
  ASSIGN_OR_RETURN(const int64_t capacity, RawCapacity(o, num_layers, block_bytes));
  RETURN_IF_ERROR(CheckPoolBytes(o, capacity, num_layers, block_bytes));
  return capacity;
}

}  // namespace xkv
