// The `reconstruct` profile mode (KVzip, arXiv 2505.23416; architecture.md §3.5): scores a
// prefilled prompt by the attention its tokens receive while the model re-reads it. The prompt is
// re-read in chunks of at most ReconstructOptions::chunk_tokens; each chunk is one scores-only
// step (no KV writes) on top of the prompt's cache, at the positions right after the prompt:
//   [repeat prompt] [end of user turn, assistant turn start] [the chunk's tokens again]
// The first chunk's repeat prompt asks to repeat the context; later ones ask to go on from the
// previous chunk's last `overlap` tokens. cpu::LaunchReconstructScores turns each layer's queries
// and keys into per-KV-head scores of the chunk (max over the input's queries and the GQA group).
// Cost: about one extra prefill of the prompt, plus the score GEMMs (512 queries at a time).
#ifndef XKV_MODEL_RECONSTRUCT_SCORER_H_
#define XKV_MODEL_RECONSTRUCT_SCORER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/importance.h"
#include "model/importance_collector.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"

namespace xkv {

// The re-reading instruction, as token ids of the model's own chat template.
struct RepeatPrompt {
  std::vector<int32_t> first;   // "\n\nRepeat the previous context exactly."
  std::vector<int32_t> next;    // "\n\nRepeat the part of the previous context exactly, starting
                                // with" (followed by the previous chunk's last `overlap` tokens)
  std::vector<int32_t> suffix;  // the user turn's end and the assistant turn's start
};

struct ReconstructOptions {
  // Prompt tokens re-read per step. kvpress uses 2048; the score GEMMs cost ~2·T·chunk per head
  // (the forward itself about one prefill whatever the chunk), so the CPU default is smaller.
  int64_t chunk_tokens = 512;
  int overlap = 8;  // previous chunk's tail repeated in the next step's prompt
  int sinks = 4;    // the first tokens: in every softmax, and scored 1
};

// Raw scores of every prompt token: [layer - layer_begin] -> fp32 [n_kv_heads, T].
struct ReconstructScores {
  int layer_begin = 0;
  int n_kv_heads = 0;
  int64_t prompt_len = 0;  // T
  std::vector<std::vector<float>> layers;
};

// Re-reads `prompt` (T tokens, already prefilled into `cache` for every layer of `model`) and
// returns its raw reconstruction scores. The cache is not modified. INVALID_ARGUMENT when the
// cache does not hold exactly T tokens or the re-reading steps would pass the model's context.
absl::StatusOr<ReconstructScores> ScoreByReconstruction(LlamaModel* model, KvCache* cache,
                                                        absl::Span<const int32_t> prompt,
                                                        const RepeatPrompt& repeat,
                                                        const ReconstructOptions& options);

// The scores of a compressed prompt of prompt_len >= raw.prompt_len tokens (the re-read prompt,
// possibly followed by a question): prefix positions [0, prompt_len - window) take the raw scores,
// the question's tokens score 1 (kept first), then `scoring`'s pooling (pool, pool_kernel).
absl::StatusOr<CollectedScores> ReconstructCollectedScores(const ReconstructScores& raw,
                                                           int64_t prompt_len,
                                                           const ModelConfig& config,
                                                           const ImportanceOptions& scoring);

// The elementwise maximum of two scorings of the same prompt (same layers, prompt length, window
// and heads; INVALID_ARGUMENT otherwise) into `scores`: e.g. reconstruction scores and the
// window's own scores, both raw probabilities. Layers `other` lacks are left as they are.
absl::Status MaxMergeScores(const CollectedScores& other, CollectedScores* scores);

}  // namespace xkv

#endif  // XKV_MODEL_RECONSTRUCT_SCORER_H_
