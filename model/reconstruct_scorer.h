// The `reconstruct` profile mode (KVzip, arXiv 2505.23416; architecture.md §3.5): scores a
// prefilled prompt by the attention its tokens receive while the model re-reads it. The prompt is
// re-read in chunks of at most ReconstructOptions::chunk_tokens; each chunk is one scores-only
// step (no KV writes) on top of the prompt's cache, at the positions right after the prompt:
//   [repeat prompt] [end of user turn, assistant turn start] [the chunk's tokens again]
// The first chunk's repeat prompt asks to repeat the context; later ones ask to go on from the
// previous chunk's last `overlap` tokens. Each engine turns a layer's queries and keys into
// per-KV-head scores of the chunk (max over the input's queries and the GQA group; RereadSpan in
// model/stage_engine.h): cpu::LaunchReconstructScores on the CPU,
// cuda::LaunchReconstructScoresPaged on a GPU. The service runs the same steps through the pipeline
// (coordinator/coordinator_step.cc: one scores-only step per chunk, accumulated by each stage with
// AccumulateReread). Cost: about one extra prefill of the prompt, plus the score products.
#ifndef XKV_MODEL_RECONSTRUCT_SCORER_H_
#define XKV_MODEL_RECONSTRUCT_SCORER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/cpu/importance.h"
#include "model/chat_template.h"
#include "model/importance_collector.h"
#include "model/model_config.h"
#include "model/stage_engine.h"
#include "model/tokenizer.h"

namespace xkv {

// The re-reading instruction, as token ids of the model's own chat template.
struct RepeatPrompt {
  std::vector<int32_t> first;   // "\n\nRepeat the previous context exactly."
  std::vector<int32_t> next;    // "\n\nRepeat the part of the previous context exactly, starting
                                // with" (followed by the previous chunk's last `overlap` tokens)
  std::vector<int32_t> suffix;  // the user turn's end and the assistant turn's start
};

// KVzip's re-reading instruction in `chat`'s template, encoded by `tok` (the strings above).
absl::StatusOr<RepeatPrompt> MakeRepeatPrompt(const Tokenizer& tok, const ChatTemplate& chat);

// The range a user may ask for ReconstructOptions::chunk_tokens (`--reconstruct-chunk` of
// `xkv eval`, `xkv serve`, `xkv generate` and `xkv coordinator`).
inline constexpr int64_t kMinRereadChunk = 64, kMaxRereadChunk = 8192;

// The chunk when none is asked. On CUDA engines kvpress's 2048: on the GPU dev split it scored
// best (mean 0.577 vs 0.547 with 512; docs/quality-reconstruct.md, "The re-reading chunk and
// pooling on the GPU", a rule fixed before the run). On the CPU 512: the score GEMMs cost
// ~2·T·chunk per head (the forward itself about one prefill whatever the chunk).
inline constexpr int64_t kCpuRereadChunk = 512, kGpuRereadChunk = 2048;
inline int64_t DefaultRereadChunk(bool gpu) { return gpu ? kGpuRereadChunk : kCpuRereadChunk; }

// The re-reading's scores are ranked unpooled (pool kernel 1, as KVzip ranks them): the service,
// and `xkv eval`'s profile=reconstruct unless its method sets kernel= (kernel=3 scored lower on the
// GPU dev split, docs/quality-reconstruct.md).
inline constexpr int kRereadPoolKernel = 1;

// INVALID_ARGUMENT "<name> <chunk> is out of range [64, 8192]" outside [kMinRereadChunk,
// kMaxRereadChunk].
absl::Status ValidateRereadChunk(int64_t chunk, absl::string_view name);

// A `--reconstruct-chunk` flag's chunk: DefaultRereadChunk(gpu) when `asked` is 0 (not given),
// else `asked` checked by ValidateRereadChunk.
absl::StatusOr<int64_t> RereadChunkFromFlag(int64_t asked, bool gpu, absl::string_view name);

struct ReconstructOptions {
  int64_t chunk_tokens = kCpuRereadChunk;  // prompt tokens re-read per step (DefaultRereadChunk)
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

// The re-reading input of the prompt's chunk [b, e), 0 <= b <= e <= prompt.size(): the repeat
// prompt (first or next, the latter followed by the prompt's `overlap` tokens before b), the
// suffix, then prompt[b, e).
std::vector<int32_t> RereadInput(absl::Span<const int32_t> prompt, int64_t b, int64_t e,
                                 const RepeatPrompt& repeat, int overlap);

// The largest chunk (<= options.chunk_tokens) whose re-reading input fits `step_tokens` tokens;
// < 1 when not even one prompt token fits after the instruction.
int64_t RereadChunkTokens(const RepeatPrompt& repeat, const ReconstructOptions& options,
                          int64_t step_tokens);

// Zero scores of a T-token prompt for layers [layer_begin, layer_end), the first `sinks` tokens 1.
ReconstructScores EmptyReconstructScores(int layer_begin, int layer_end, int n_kv_heads, int64_t T,
                                         int sinks);

// Max-accumulates one re-reading step's scores (EngineObservation::reread of the span) into `out`;
// INVALID_ARGUMENT when the shapes do not match.
absl::Status AccumulateReread(const std::vector<std::vector<float>>& chunk, const RereadSpan& span,
                              ReconstructScores* out);

// Re-reads `prompt` (T tokens, already prefilled as sequence `id` of `engine`, which must hold
// every layer) and returns its raw reconstruction scores, on whatever device the engine runs. The
// cache is not modified. INVALID_ARGUMENT when the cache does not hold exactly T tokens or the
// re-reading steps would pass the model's context; NOT_FOUND for an unknown sequence.
absl::StatusOr<ReconstructScores> ScoreByReconstruction(StageEngine* engine, uint64_t id,
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
