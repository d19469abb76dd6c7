// The coordinator checks what the stages report they hold against its KV ledger (architecture.md
// §5): a stage whose layer sizes disagree ends that request with INTERNAL naming the request, the
// layer and both counts; the other requests of the batch go on and every block comes back.
// One fake stage (no model compute) behind the real Coordinator, Scheduler and PipelineDriver.
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xkv {
namespace {

using ::testing::HasSubstr;

constexpr int kBlockTokens = 16;

// Holds every layer of the model; answers each step with token 1000 and the layer sizes of each
// sequence's cache, except that it over-reports one block of layer 3 for `liar`.
class LedgerStage final : public StageClient {
 public:
  LedgerStage(int layers, uint64_t liar) : layers_(layers), liar_(liar) {}
  std::string address() const override { return "ledger-stage"; }
  xkv::v1::LinkKind link_kind() const override { return xkv::v1::LINK_KIND_IN_PROCESS; }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    xkv::v1::LoadStageResponse r;
    r.set_block_tokens(kBlockTokens);
    r.set_block_bytes(1024);
    r.set_stage_capacity_blocks(64 * (request.layer_end() - request.layer_begin()));
    return r;
  }
  absl::StatusOr<xkv::v1::StepResponse> Step(const xkv::v1::StepRequest& request) override {
    std::lock_guard<std::mutex> lock(mu_);
    xkv::v1::StepResponse response;
    for (const xkv::v1::StepSequence& s : request.sequences()) {
      const int64_t tokens = s.position() + s.n_new();
      held_[s.seq_id()] = tokens;
      xkv::v1::SequenceResult* out = response.add_sequences();
      out->set_seq_id(s.seq_id());
      out->set_token(s.skip_sampling() ? -1 : 1000);
      for (int l = 0; l < layers_; ++l) {
        xkv::v1::LayerSize* size = out->add_layers();
        size->set_layer(l);
        size->set_tokens(tokens);
        const int64_t blocks = (tokens + kBlockTokens - 1) / kBlockTokens;
        size->set_blocks(blocks + (s.seq_id() == liar_ && l == 3 ? 1 : 0));
        size->set_bytes(size->blocks() * 1024);
      }
    }
    return response;
  }
  absl::StatusOr<xkv::v1::CompactResponse> Compact(const xkv::v1::CompactRequest&) override {
    return absl::UnimplementedError("the full cache is never compacted");
  }
  absl::StatusOr<xkv::v1::ReleaseResponse> Release(
      const xkv::v1::ReleaseRequest& request) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : request.seq_ids()) held_.erase(id);
    return xkv::v1::ReleaseResponse();
  }
  absl::StatusOr<xkv::v1::StatusResponse> Status() override {
    xkv::v1::StatusResponse r;
    r.set_health(xkv::v1::STAGE_HEALTH_SERVING);
    return r;
  }
  int held() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(held_.size());
  }

 private:
  const int layers_;
  const uint64_t liar_;
  std::mutex mu_;
  std::map<uint64_t, int64_t> held_;  // tokens per sequence
};

class Collector final : public GenerateSink {
 public:
  void OnDelta(const std::string&, absl::Span<const int32_t> ids,
               absl::Span<const SampledLogprobs>) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_ += static_cast<int>(ids.size());
  }
  void OnDone(const xkv::v1::Usage&) override { End(absl::OkStatus()); }
  void OnError(const absl::Status& status) override { End(status); }
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return done_; })) {
      return absl::DeadlineExceededError("the request never ended");
    }
    return status_;
  }
  int tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }

 private:
  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  absl::Status status_;
  int tokens_ = 0;
};

TEST(KvLedgerReportTest, ADisagreeingStageEndsThatRequestAlone) {
  const char* model = std::getenv("XKV_MODEL");
  ASSERT_NE(model, nullptr) << "XKV_MODEL must name the test model (tests/CMakeLists.txt sets it)";
  CoordinatorOptions o;
  o.model_path = model;
  o.kv.policy = PolicyKind::kFull;
  o.block_tokens = kBlockTokens;
  const uint64_t kLiar = 2;  // ids are given in submission order from 1
  std::vector<std::unique_ptr<StageClient>> stages;
  // SmolLM2-135M has 30 layers; the coordinator plans one stage over all of them.
  auto stage = std::make_unique<LedgerStage>(30, kLiar);
  LedgerStage* fake = stage.get();
  stages.push_back(std::move(stage));
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(o, std::move(stages));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->config().n_layers, 30);
  auto honest = std::make_shared<Collector>(), lying = std::make_shared<Collector>();
  GenerateParams p;
  p.prompt = "The KV ledger counts blocks";
  p.max_tokens = 6;
  p.ignore_eos = true;
  p.kv.policy = "full";
  absl::StatusOr<uint64_t> a = (*c)->Submit(p, honest);
  absl::StatusOr<uint64_t> b = (*c)->Submit(p, lying);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(*b, kLiar);
  const absl::Status lied = lying->Wait();
  EXPECT_EQ(lied.code(), absl::StatusCode::kInternal) << lied;
  EXPECT_THAT(lied.message(), testing::AllOf(HasSubstr("sequence 2 layer 3"),
                                             HasSubstr("in 2 blocks, the coordinator's ledger"),
                                             HasSubstr("in 1 blocks")));
  EXPECT_TRUE(honest->Wait().ok());
  EXPECT_EQ(honest->tokens(), 6);
  EXPECT_EQ(fake->held(), 0) << "both requests were released on the stage";
}

}  // namespace
}  // namespace xkv
