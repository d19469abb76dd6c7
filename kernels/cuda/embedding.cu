#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/embedding.cuh"

namespace xkv::cuda {
namespace {

constexpr int kThreads = 256;

// grid.x = token. table bf16 [vocab, dim]; out fp32 [n_tokens, dim].
__global__ void EmbeddingKernel(const __nv_bfloat16* __restrict__ table, int64_t vocab, int64_t dim,
                                const int32_t* __restrict__ tokens, float* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t id = tokens[t];
  float* o = out + t * dim;
  if (id < 0 || id >= vocab) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __int_as_float(0x7fc00000);
    return;
  }
  const __nv_bfloat16* row = table + static_cast<int64_t>(id) * dim;
  if (dim % 8 == 0) {
    for (int64_t i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
      float v[8];
      internal::LoadBf16x8(row + i, v);
      reinterpret_cast<float4*>(o + i)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(o + i)[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __bfloat162float(row[i]);
  }
}

}  // namespace

absl::Status LaunchEmbedding(const __nv_bfloat16* table, int64_t vocab, int64_t dim,
                             const int32_t* tokens, int64_t n_tokens, float* out,
                             cudaStream_t stream) {
  if (vocab <= 0 || dim <= 0 || n_tokens < 0 || n_tokens > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda embedding: bad sizes vocab=", vocab, " dim=", dim, " n=", n_tokens));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (table == nullptr || tokens == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("cuda embedding: null pointer");
  }
  EmbeddingKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(table, vocab, dim,
                                                                            tokens, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace xkv::cuda
