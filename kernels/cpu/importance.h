// XKV importance scores (architecture.md §3.1): how much attention the observation window (last w
// prompt queries) pays to every earlier prompt position, per KV head (or per query head).
#ifndef XKV_KERNELS_CPU_IMPORTANCE_H_
#define XKV_KERNELS_CPU_IMPORTANCE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace xkv {

// Which heads the scores are reported for.
enum class ScoreGranularity {
  kKvHead,     // the scores of the query heads sharing a KV head are summed into it (default)
  kQueryHead,  // one row per query head (the paper's code; for comparison only)
};

// How the window queries (and, for kKvHead, the query heads of a GQA group) combine into one
// score per position, and how positions are pooled.
enum class ScoreReduce {
  kSum,  // sum of the softmax rows (SnapKV, the paper)
  kMax,  // max over the window queries and the group's query heads (a raw probability in [0, 1])
};
enum class ScorePool {
  kAvg,  // 'same' average pooling, count_include_pad=True (SnapKV's avg_pool1d)
  kMax,  // 'same' max pooling (a position scores as its best neighbour within kernel/2)
};

struct ImportanceOptions {
  int window = 8;       // w: the last w prompt positions are the observation window
  int pool_kernel = 7;  // odd, >= 1; 1 disables pooling
  ScoreGranularity granularity = ScoreGranularity::kKvHead;
  ScoreReduce reduce = ScoreReduce::kSum;
  ScorePool pool = ScorePool::kAvg;
};

// Shape of one sequence's inputs for one layer.
struct ImportanceShape {
  int n_heads = 0;      // query heads
  int n_kv_heads = 0;   // KV heads; n_heads % n_kv_heads == 0 (GQA group = n_heads / n_kv_heads)
  int head_dim = 0;     // d
  int64_t seq_len = 0;  // T: prompt length including the window; T >= window
};

// Rows of the score output for `granularity`: n_kv_heads or n_heads.
int ImportanceHeads(const ImportanceShape& shape, ScoreGranularity granularity);

namespace cpu {

// Computes, for every query head h and window query i (absolute position T-w+i):
//   A[h, i, :] = softmax(q[i, h, :] · k[h / group, j, :] / sqrt(d)) over keys j <= T-w+i (fp32),
// combines the w window queries (sum, or max for ScoreReduce::kMax), keeps the prefix columns
// j < P = T-w (drops the window's own columns), combines query heads into their KV head when
// granularity == kKvHead (sum, or max), then pools along positions with kernel `pool_kernel`,
// stride 1, padding pool_kernel/2 ('same' length). Average pooling follows PyTorch
// F.avg_pool1d(kernel, stride=1, padding=kernel//2) with its default count_include_pad=True,
// exactly as SnapKV's code: every output is the window sum divided by the kernel size, also near
// the edges where part of the window is zero padding. Max pooling takes the window's maximum.
//
// q:      fp32 [w, n_heads, head_dim]        post-RoPE queries of the last w prompt positions
// k:      fp32 [n_kv_heads, T, head_dim]     post-RoPE keys of all T prompt positions
// scores: fp32 [ImportanceHeads(shape, granularity), T - w]   output
absl::Status LaunchImportance(const float* q, const float* k, const ImportanceShape& shape,
                              const ImportanceOptions& options, float* scores);

// The pooling step alone: 'same' pooling of in[n] into out[n] over in[j-r .. j+r] ∩ [0, n),
// r = kernel / 2 (odd kernel >= 1): the window sum / kernel (count_include_pad=True), or its max.
void PoolScores(const float* in, int64_t n, int kernel, ScorePool pool, float* out);

}  // namespace cpu
}  // namespace xkv

#endif  // XKV_KERNELS_CPU_IMPORTANCE_H_
