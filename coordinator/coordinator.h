// The coordinator core (architecture.md §1): tokenization and chat template, the bounded queue and
// continuous batching (Scheduler), XKV profile/solve per request (kv_budgeting), the stage planner,
// the pipeline driver over StageClients, streamed results with usage, cancellation, deadlines,
// admission by free KV blocks, and the admin operations. Proto messages appear only as plain data
// (Usage, admin responses); no gRPC here — the *_service files adapt it.
//
// Threads: Submit/Cancel/admin calls come from any thread; one loop thread plans steps, keeps up
// to SchedulerOptions::micro_batches of them in flight through the stages, applies their results
// in completion order and calls every sink (GenerateSink) from that thread.
#ifndef XKV_COORDINATOR_COORDINATOR_H_
#define XKV_COORDINATOR_COORDINATOR_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/profile_store.h"
#include "coordinator/clock.h"
#include "coordinator/generate_params.h"
#include "coordinator/kv_budgeting.h"
#include "coordinator/pipeline_driver.h"
#include "coordinator/scheduler.h"
#include "coordinator/stage_planner.h"
#include "coordinator/step_timing.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/reconstruct_scorer.h"
#include "model/tokenizer.h"
#include "xkv/v1/admin.pb.h"
#include "xkv/v1/generation.pb.h"

namespace xkv {

// What the coordinator reports about each request when it ends (for metrics; tools/ wires it).
struct RequestRecord {
  absl::StatusCode code = absl::StatusCode::kOk;  // the status the client gets
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double ttft_seconds = -1;  // submit to first token; < 0 when no token was produced
  double e2e_seconds = -1;   // submit to the end; < 0 for requests rejected at submit
  double tpot_seconds = -1;  // (end - first token) / (tokens - 1); < 0 with fewer than 2 tokens
  std::vector<double> itl_seconds;  // each gap between consecutive generated tokens (seconds)
  double profile_seconds = 0;       // importance profiling (mini-prefill or observed scoring)
  double solve_seconds = 0;         // the budget solver
  double queue_seconds = 0;         // submit to admission (< ttft_seconds; 0 when not admitted)
};

struct CoordinatorOptions {
  std::string model_path;  // GGUF: tokenizer, config and layer sizes (workers load it too)
  KvSettings kv;           // the service's default policy, target and profile mode
  int window = 8;          // observation window w
  // The baselines' (snapkv, pyramidkv, the paper allocator) average-pooling kernel; every request
  // is scored by its own policy's rule (ScoringFor, model/kv_allocation.h: xkv's global allocator
  // max-pools with kXkvPoolKernel), as `xkv eval` scores that method.
  int pool_kernel = 7;
  bool query_head_scores = false;
  // Profile mode reconstruct: prompt tokens re-read per step, in [kMinRereadChunk,
  // kMaxRereadChunk] (tools/ give DefaultRereadChunk of the stages' device), shrunk to what one
  // step of scheduler.step_token_budget holds after the repeat instruction.
  int64_t reread_chunk = kCpuRereadChunk;
  int block_tokens = 16;
  int64_t kv_capacity_blocks = 0;  // per layer of a stage (its one pool: x its layers); 0 = default
  SchedulerOptions scheduler;      // kv (the stages' pools) and min_final_chunk are filled in
  StagePlannerOptions planner;     // num_stages = the number of stage clients
  bool auto_replan = false;        // re-plan when the profile shifts past the threshold
  int64_t default_max_tokens = 256;
  uint64_t seed = 0;             // sampled-profile decisions
  const Clock* clock = nullptr;  // null: the real clock
  // Chat requests' template family by name (model/chat_template.h); empty: the GGUF's own.
  std::string chat_template;
  // Optional: called once per request when it ends or is rejected (any thread; must be cheap).
  std::function<void(const RequestRecord&)> on_request_done;
  // The NCCL data plane between the workers (architecture.md §1), when set: every (re)load of the
  // stages (start, re-plan, recovery) asks it for a fresh NCCL unique id (128 raw bytes) and sends
  // it to every stage with rank = stage index. Unset: the stage clients' own links (gRPC between
  // worker processes). tools/ sets it to NcclStageLink::NewNcclUniqueId in NCCL builds.
  std::function<absl::StatusOr<std::string>()> nccl_unique_id_source;
  // A monitor thread asks every stage for its status this often (0: never), busy or idle; each
  // answer is bounded by the stage client's status deadline. Readiness() reports what it saw, and a
  // stage that answers but is not serving (a worker restarted empty) gets the stages reloaded.
  absl::Duration health_interval = absl::Seconds(1);
  // Shutdown(): how long in-flight requests may still run after admission stopped; the rest are
  // then cancelled (UNAVAILABLE) and their blocks released on every stage.
  absl::Duration shutdown_grace = absl::Seconds(30);
  // Sent to the workers as their link timeout (a stage waiting for its neighbour's hidden rows);
  // 0: the workers' default. tools/ sets it to the stage clients' step deadline.
  absl::Duration link_timeout = absl::ZeroDuration();
  // > 0: one stderr line per this many step passes with where their time went (step_timing.h).
  int log_step_timing = 0;
};

// One request's stream. Called from the coordinator's loop thread, in order: OnDelta* then
// exactly one of OnDone / OnError.
class GenerateSink {
 public:
  virtual ~GenerateSink() = default;
  // `logprobs`: one per token id when the request asked for them (GenerateParams::logprobs),
  // else empty.
  virtual void OnDelta(const std::string& text, absl::Span<const int32_t> token_ids,
                       absl::Span<const SampledLogprobs> logprobs) = 0;
  virtual void OnDone(const xkv::v1::Usage& usage) = 0;
  virtual void OnError(const absl::Status& status) = 0;
};

class Coordinator {
 public:
  // Reads the model, plans the stages, loads every stage and starts the loop thread.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(
      const CoordinatorOptions& options, std::vector<std::unique_ptr<StageClient>> stages);
  ~Coordinator();

  // Validates (INVALID_ARGUMENT, also when it can never fit the KV pool), tokenizes and queues
  // (RESOURCE_EXHAUSTED when the queue is full). Returns the request id; the sink then receives the
  // stream.
  absl::StatusOr<uint64_t> Submit(GenerateParams params, std::shared_ptr<GenerateSink> sink);
  // Frees the request's blocks on every stage; its sink gets OnError(`status`): CANCELLED when the
  // client went away, DEADLINE_EXCEEDED when its deadline passed.
  void Cancel(uint64_t id, absl::Status status = absl::CancelledError("the request was cancelled"));

  // OK while the service admits requests and every stage serves; otherwise UNAVAILABLE naming the
  // reason: a stage refuses connections, missed two status checks in a row (hung), is not loaded,
  // or the coordinator drains or shuts down. Cheap (reads what the monitor thread saw; no stage
  // call): grpc.health.v1 and /ready report it.
  absl::Status Readiness() const;

  // Admin.
  absl::StatusOr<double> SetRetentionTarget(double retention);
  absl::Status SetPolicy(const KvPolicyOverride& policy);
  xkv::v1::ServiceConfig GetConfig() const;
  xkv::v1::GetAllocationResponse GetAllocation() const;
  // Every stage's status, with the stage planner's predicted KV bytes (PredictedStageKvBytes).
  xkv::v1::GetClusterStatusResponse GetClusterStatus();
  // The stage planner's expected KV bytes of every stage ([S], architecture.md §5) at the live
  // load: its per-layer model (ExpectedKvBytes) over the admitted requests, with their mean prompt
  // and generated tokens, compressed ones under the live allocation profile, the others as a full
  // cache, summed over each stage's layers. What the stages really hold is kv_bytes_used (a
  // prompt still being prefilled, or a preempted request waiting, is counted whole here).
  absl::StatusOr<std::vector<int64_t>> PredictedStageKvBytes() const;
  // Admitted requests that have no token yet (prefilling or profiling).
  int64_t PrefillingRequests() const;
  absl::StatusOr<xkv::v1::ReplanResponse> Replan(bool dry_run);
  xkv::v1::DrainResponse Drain(bool resume, int64_t timeout_ms);

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // Graceful stop: admission ends at once (new and queued requests get UNAVAILABLE, Readiness
  // turns not-ready), running requests may finish for options.shutdown_grace, the rest end with
  // UNAVAILABLE; every request's blocks are released on every stage. Idempotent.
  void Shutdown() { ShutdownWithGrace(options_.shutdown_grace); }
  void ShutdownWithGrace(absl::Duration grace);
  // The options it started with (the KV policy may have changed since: SetPolicy).
  const CoordinatorOptions& options() const { return options_; }
  // The prompt tokens one re-reading step takes: options().reread_chunk shrunk to fit a step after
  // the repeat instruction (PlanRereads); 0 when reconstruct cannot run (no repeat instruction in
  // the chat template, or steps too small for it).
  int64_t RereadChunk() const;

 private:
  absl::StatusOr<uint64_t> SubmitImpl(GenerateParams params, std::shared_ptr<GenerateSink> sink);
  struct Sequence;
  // Calls options_.on_request_done for a sequence that ends with `status`.
  void ReportDone(const Sequence& seq, const absl::Status& status) const;
  explicit Coordinator(const CoordinatorOptions& options);
  absl::Status Init(std::vector<std::unique_ptr<StageClient>> stages);
  absl::StatusOr<std::vector<int32_t>> Tokenize(const GenerateParams& params) const;
  ModelCostInputs CostInputs() const;
  std::vector<double> KeptFractions() const;
  absl::Status PlanBudgetsAtSubmit(Sequence& seq);
  // The reconstruct profile's re-reading steps of seq's prompt, each within one step's tokens.
  absl::Status PlanRereads(Sequence& seq) const;
  // The re-reading's options: options_.reread_chunk's chunk, the rest ReconstructOptions'.
  ReconstructOptions RereadOptions() const;
  // Budgets sent to the stages lie in [0, prefix]: larger ones are clamped to the prefix (keep
  // all); INVALID_ARGUMENT for a negative one (an overflow upstream) or a wrong layer count, and
  // this request alone fails.
  absl::Status ClampBudgets(const Sequence& seq, std::vector<int64_t>& budgets) const;
  // Whether this deployment can serve `kv`: INVALID_ARGUMENT when it asks for per-(layer, KV head)
  // budgets and a stage keeps one block table per layer, or for allocator heads without the
  // service's head weights (CheckHeadWeights).
  absl::Status CheckStagesHold(const KvSettings& kv) const;
  SequenceSpec SpecFor(const Sequence& seq) const;  // the scheduler's view of a sequence
  void Loop();
  void ProcessCancels();
  // coordinator_step.cc: micro-batches (architecture.md §6). A planned step runs as up to two
  // passes through the stages: the scores-only profile pass (when the plan has profile work), then
  // the main pass; each pass is one driver step. Loop thread only.
  struct MicroBatch {
    StepPlan plan;
    bool main = false;                // the pass in flight is the main one
    std::vector<size_t> items;        // the pass's plan.items, in request order
    std::vector<bool> compacts;       // [items]: the pass asks the stages to compact it
    PipelineDriver::StepHandle pass;  // the pass in flight
    absl::Time started;               // when the pass started
    StepPhases phases;                // --log-step-timing: the pass's plan, launch, ...
  };
  // Plans and starts micro-batches until options_.scheduler.micro_batches are in flight or there
  // is no work (none while stopping, nor while suspect stages wait for the pipeline to drain).
  void FillPipeline();
  // Starts a planned step's first pass; a plan that cannot start (the stages are down) ends.
  void LaunchStep(StepPlan plan, double plan_ms);
  // Starts the batch's current pass; false when the pass has no sequence.
  bool StartPass(MicroBatch& batch);
  // Waits for the oldest pass in flight and applies its results; then starts the batch's main
  // pass, or completes the batch (its sequences may be planned again).
  void CompleteOldest();
  // --log-step-timing: the pass's wait and apply phases (it waited from wait_start to wait_end
  // and was applied until now) into step_timing_, which prints a line every N passes.
  void LogStepTiming(MicroBatch& batch, const absl::StatusOr<StepOutcome>& outcome,
                     StepTimingLog::Clock::time_point wait_start,
                     StepTimingLog::Clock::time_point wait_end);
  absl::Status ApplyProfiles(const MicroBatch& batch, const StepOutcome& outcome);
  // Solves one profiled sequence's budgets from its scores-only pass.
  absl::Status SolveProfiled(Sequence& seq, const SequenceStepResult& result);
  // Takes the outcome's layer sizes (moved into each sequence).
  absl::Status ApplyMain(const MicroBatch& batch, StepOutcome& outcome);
  void FillStepSequence(const WorkItem& item, Sequence& seq, xkv::v1::StepSequence* out);
  // An observed step of seq (OBSERVE, SCORES_ONLY, REREAD): its mode, per-head scores and its
  // policy's window scoring.
  void SetObserved(const Sequence& seq, xkv::v1::SequenceMode mode,
                   xkv::v1::StepSequence* out) const;
  // What ScoringFor adjusts: the service's window, pool kernel and granularity.
  ImportanceOptions ScoringBase() const;
  absl::Status AfterPrefill(Sequence& seq, const SequenceStepResult& result);
  // The scores-only pass of a reconstruct request's re-reading step; after the last one, solves
  // (unless the budgets are known) and compacts.
  absl::Status AfterReread(Sequence& seq, const WorkItem& item, const SequenceStepResult& result);
  // Solves the budgets from seq.gains (unless known) and compacts the sequence on every stage:
  // the ledger takes the sizes the compaction leaves at once, and the compaction is queued on the
  // stages ahead of the next step (compactions_) without the loop waiting for it.
  absl::Status SolveAndCompact(Sequence& seq);
  // Checks the stages' answers to the queued compactions, oldest first: those that arrived, or
  // (wait) all of them; a failed or unexpected one ends its request. Loop thread.
  void ApplyCompactions(bool wait);
  // KV ledger (coordinator_step.cc): the stages' report of a sequence after a step (seq.layers;
  // `compacted`: the step compacted it) against the scheduler's ledger; INTERNAL when they
  // disagree.
  absl::Status ReconcileKv(const Sequence& seq, bool compacted);
  // The scheduler preempted a sequence: frees it on the stages; it recomputes on re-admission.
  void Preempt(const Preemption& preemption);
  absl::Status ApplyBudgets(Sequence& seq, PolicyBudgets budgets, bool profiled,
                            int64_t prefix_len);
  Sequence* Find(uint64_t id);
  void AcceptToken(Sequence& seq, int32_t token, const std::optional<SampledLogprobs>& logprobs);
  void Emit(Sequence& seq, std::string bytes, std::vector<int32_t> ids,
            std::vector<SampledLogprobs> logprobs = {});
  void FinishSequence(uint64_t id, const absl::Status& status, int finish_reason);
  // Frees a sequence on every stage; a stage that cannot be reached keeps it in unreleased_ until
  // it answers again (or the stages are reloaded).
  void ReleaseOnStages(uint64_t id);
  // A step failed as a whole: every sequence of `plan` that produced no token yet starts over
  // once (its stage state is gone); the others end (UNAVAILABLE for a stage fault, else `status`).
  void FailStep(const StepPlan& plan, const absl::Status& status);
  // Requeues a sequence that has produced nothing from its first token; false when it cannot.
  bool Restart(Sequence& seq);
  // Monitor thread: polls the stages' status every options_.health_interval.
  void Monitor();
  // Ends every queued request with `status` (drain, shutdown).
  void DropQueued(const absl::Status& status);
  xkv::v1::Usage MakeUsage(const Sequence& seq, int finish_reason) const;
  void MaybeAutoReplan();
  bool WaitIdle(absl::Duration timeout);  // until no request runs
  absl::Status ReloadStages(const StagePlan& plan);
  // After a failed step, or when the monitor asks: UNAVAILABLE while a stage is unreachable; a
  // stage that answers but is not serving (a worker restarted empty) gets the current plan
  // reloaded on every stage, after the started requests fail (their caches go with the reload);
  // otherwise the sequences in unreleased_ are released. Loop thread, under driver_mu_.
  absl::Status RecoverStages();

  CoordinatorOptions options_;
  const Clock* clock_;
  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  absl::StatusOr<ChatTemplate> chat_template_ = absl::UnknownError("not loaded");
  absl::StatusOr<RepeatPrompt> repeat_ = absl::UnknownError("not loaded");  // reconstruct
  std::vector<int32_t> eos_tokens_;
  // Per layer, from the stages' block size; read by Submit threads while a reload writes it.
  std::atomic<int64_t> bytes_per_token_{0};
  std::unique_ptr<PipelineDriver> driver_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ProfileStore> store_;  // running mean of solved budgets (the live profile)

  mutable std::mutex mu_;  // guards the fields below
  KvSettings kv_;
  StagePlan plan_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Sequence>> sequences_;
  std::vector<std::pair<uint64_t, absl::Status>> cancels_;
  std::vector<uint64_t> drop_queued_;  // queued requests to end (drain), with drop_status_
  absl::Status drop_status_;
  bool draining_ = false;  // Admin Drain: new requests get UNAVAILABLE at once
  bool stopping_ = false;  // Shutdown began: likewise
  bool recover_ = false;   // the monitor saw a stage that answers but does not serve
  absl::Status stages_ready_ = absl::UnavailableError("the stages were not checked yet");
  uint64_t next_id_ = 1;
  bool stop_ = false;
  bool work_ = false;                     // a request was submitted since the loop last slept
  std::vector<double> mean_kept_tokens_;  // [L] running mean of solved budgets
  std::condition_variable wake_;          // new work, cancels, stop
  std::condition_variable drained_;       // a sequence finished

  std::mutex driver_mu_;  // one driver call (start, wait, compact, release) or reload at a time
  uint64_t step_id_ = 0;
  std::deque<MicroBatch> in_flight_;  // loop thread only (read under mu_); oldest pass first
  struct PendingCompaction {
    uint64_t id = 0;
    PipelineDriver::CompactHandle handle;
    std::vector<xkv::v1::LayerSize> predicted;  // what the ledger took (compaction_sizes.h)
  };
  std::deque<PendingCompaction> compactions_;            // loop thread only; oldest first
  StepTimingLog step_timing_{options_.log_step_timing};  // loop thread only
  int64_t loop_compactions_ = 0;  // Compact calls since the last logged pass (loop thread only)
  double loop_compact_ms_ = 0;    // their time on the loop, solve included (loop thread only)
  std::atomic<uint64_t> sample_counter_{0};  // sampled-mode requests so far (ProfileStore key)
  int64_t last_replan_samples_ = 0;          // loop thread only
  bool stages_suspect_ = false;       // a step failed: check the stages first (loop thread only)
  std::vector<uint64_t> unreleased_;  // ended on a stage that did not answer (loop thread only)
  absl::Time release_retry_at_ = absl::InfinitePast();  // loop thread only
  bool defer_release_ = false;            // FailStep of a stage fault: releases go to unreleased_
  std::condition_variable monitor_wake_;  // stop_ (with mu_)
  std::atomic<uint64_t> reloads_{0};      // ReloadStages: incremented before and after loading
  std::thread loop_, monitor_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_COORDINATOR_H_
