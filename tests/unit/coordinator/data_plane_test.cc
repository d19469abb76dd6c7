// The coordinator's data-plane choice (`xkv coordinator --data-plane`): flag values, the NCCL id
// source, and what LoadStages sends every stage with an NCCL id — concurrently, since joining an
// NCCL communicator is collective.
#include "coordinator/data_plane.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/pipeline_driver.h"
#include "gtest/gtest.h"
#include "tests/unit/coordinator/unimplemented_stage_client.h"

namespace xkv {
namespace {

TEST(DataPlaneTest, ParsesTheTwoPlanes) {
  EXPECT_EQ(*ParseDataPlane("grpc"), DataPlane::kGrpc);
  EXPECT_EQ(*ParseDataPlane("nccl"), DataPlane::kNccl);
  for (const char* bad : {"", "NCCL", "gRPC", "nccl ", "tcp", "in-process"}) {
    EXPECT_EQ(ParseDataPlane(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(DataPlaneTest, GrpcClearsTheIdSource) {
  CoordinatorOptions o;
  o.nccl_unique_id_source = [] { return std::string(128, 'x'); };
  ASSERT_TRUE(ApplyDataPlane("grpc", nullptr, &o).ok());
  EXPECT_FALSE(o.nccl_unique_id_source);
}

TEST(DataPlaneTest, NcclUsesTheGivenSource) {
  CoordinatorOptions o;
  int calls = 0;
  ASSERT_TRUE(
      ApplyDataPlane(
          "nccl", [&calls] { return std::string(128, static_cast<char>('a' + calls++)); }, &o)
          .ok());
  ASSERT_TRUE(o.nccl_unique_id_source);
  EXPECT_EQ(*o.nccl_unique_id_source(), std::string(128, 'a'));
  EXPECT_EQ(*o.nccl_unique_id_source(), std::string(128, 'b'));  // fresh per call
}

TEST(DataPlaneTest, NcclWithoutANcclBuildIsAClearError) {
  CoordinatorOptions o;
  const absl::Status s = ApplyDataPlane("nccl", nullptr, &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("--data-plane=grpc"), std::string::npos) << s;
  EXPECT_FALSE(o.nccl_unique_id_source);
  EXPECT_EQ(ApplyDataPlane("mpi", nullptr, &o).code(), absl::StatusCode::kInvalidArgument);
}

// Records the LoadStage requests; each call waits (bounded) until every stage's call has arrived,
// as ncclCommInitRank does, so loading the stages one after another would fail.
class BarrierStageClient final : public UnimplementedStageClient {
 public:
  struct Shared {
    std::mutex mu;
    std::condition_variable arrived;
    int count = 0;
    int expected = 0;
    std::vector<xkv::v1::LoadStageRequest> requests;
  };
  BarrierStageClient(std::shared_ptr<Shared> shared, int index)
      : shared_(std::move(shared)), index_(index) {}

  std::string address() const override { return "worker" + std::to_string(index_); }
  absl::StatusOr<xkv::v1::LoadStageResponse> LoadStage(
      const xkv::v1::LoadStageRequest& request) override {
    std::unique_lock<std::mutex> lock(shared_->mu);
    shared_->requests[index_] = request;
    ++shared_->count;
    shared_->arrived.notify_all();
    if (!shared_->arrived.wait_for(lock, std::chrono::seconds(20),
                                   [&] { return shared_->count >= shared_->expected; })) {
      return absl::DeadlineExceededError("the other stages never joined");
    }
    xkv::v1::LoadStageResponse response;
    response.mutable_model()->set_n_layers(6);
    response.set_block_bytes(64);
    response.set_stage_capacity_blocks(8 * (request.layer_end() - request.layer_begin()));
    return response;
  }

 private:
  std::shared_ptr<Shared> shared_;
  int index_;
};

std::shared_ptr<BarrierStageClient::Shared> NewShared(int stages) {
  auto shared = std::make_shared<BarrierStageClient::Shared>();
  shared->expected = stages;
  shared->requests.resize(stages);
  return shared;
}

PipelineDriver MakeDriver(const std::shared_ptr<BarrierStageClient::Shared>& shared, int stages) {
  std::vector<std::unique_ptr<StageClient>> clients;
  for (int s = 0; s < stages; ++s)
    clients.push_back(std::make_unique<BarrierStageClient>(shared, s));
  return PipelineDriver(std::move(clients));
}

StagePlan ThreeStages() {
  StagePlan plan;
  plan.stages.resize(3);
  plan.stages[0].layer_begin = 0;
  plan.stages[0].layer_end = 2;
  plan.stages[1].layer_begin = 2;
  plan.stages[1].layer_end = 4;
  plan.stages[2].layer_begin = 4;
  plan.stages[2].layer_end = 6;
  return plan;
}

TEST(PipelineDriverNcclTest, EveryStageGetsTheIdWithItsRankConcurrently) {
  auto shared = NewShared(3);
  PipelineDriver driver = MakeDriver(shared, 3);
  StageLoadSettings settings;
  settings.model_path = "m.gguf";
  settings.nccl_unique_id = std::string(128, '\x7f');
  ASSERT_TRUE(driver.LoadStages(ThreeStages(), settings).ok());
  for (int s = 0; s < 3; ++s) {
    const xkv::v1::LoadStageRequest& r = shared->requests[s];
    EXPECT_EQ(r.link_kind(), xkv::v1::LINK_KIND_NCCL) << s;
    EXPECT_EQ(r.nccl_unique_id(), settings.nccl_unique_id) << s;
    EXPECT_EQ(r.nccl_rank(), s);
    EXPECT_EQ(r.stage_index(), s);
    EXPECT_EQ(r.nccl_world_size(), 3);
    EXPECT_EQ(r.num_stages(), 3);
  }
  const std::vector<KvStage> pools = driver.KvStages();
  ASSERT_EQ(pools.size(), 3u);
  for (size_t s = 0; s < pools.size(); ++s) {
    EXPECT_EQ(pools[s].layer_begin, s == 0 ? 0 : pools[s - 1].layer_end);
    EXPECT_EQ(pools[s].capacity_blocks, 8 * (pools[s].layer_end - pools[s].layer_begin));
  }
  EXPECT_EQ(pools.back().layer_end, 6);
}

TEST(PipelineDriverNcclTest, WithoutAnIdTheClientsLinkKindAndNoNcclFields) {
  auto shared = NewShared(3);
  PipelineDriver driver = MakeDriver(shared, 3);
  StageLoadSettings settings;
  settings.model_path = "m.gguf";
  ASSERT_TRUE(driver.LoadStages(ThreeStages(), settings).ok());
  for (int s = 0; s < 3; ++s) {
    const xkv::v1::LoadStageRequest& r = shared->requests[s];
    EXPECT_EQ(r.link_kind(), xkv::v1::LINK_KIND_GRPC) << s;
    EXPECT_TRUE(r.nccl_unique_id().empty()) << s;
    EXPECT_EQ(r.nccl_world_size(), 0) << s;
  }
  EXPECT_EQ(shared->requests[0].next_stage(), "worker1");
}

}  // namespace
}  // namespace xkv
