// Two real workers on loopback ports with GrpcStageLink between them, driven through the Worker
// stubs exactly as the coordinator does: the same StepRequest to both stages at once.
#include "worker/worker_service.h"

#include <grpcpp/generic/generic_stub.h>

#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/worker_test_util.h"
#include "worker/grpc_status.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv {
namespace {

using ::xkv::testing::LoadWholeModel;
using ::xkv::testing::RandomTokens;
using ::xkv::testing::WorkerModelPath;

std::shared_ptr<grpc::Channel> Connect(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

// grpc.health.v1.Health/Check by hand (the health stubs are not installed): returns the
// ServingStatus number (1 SERVING, 2 NOT_SERVING), or -1 when the call fails.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  std::string request;
  if (!service.empty())
    request = absl::StrCat("\x0a", std::string(1, char(service.size())), service);
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status s) { done.set_value(s); });
  if (!done.get_future().get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
}

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      WorkerServerOptions o;
      o.listen = "127.0.0.1:0";
      o.service.limits.model_dir = ::testing::TempDir();  // where WorkerModelPath() lies
      auto server = WorkerServer::Start(o);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
      channels_.push_back(Connect(servers_.back()->port()));
      stubs_.push_back(xkv::v1::Worker::NewStub(channels_.back()));
    }
  }

  grpc::Status Load(int i, int begin, int end, const std::string& next) {
    xkv::v1::LoadStageRequest r;
    r.set_numerics("exact");  // compared against an fp32 LlamaModel
    r.set_model_path(WorkerModelPath());
    r.set_layer_begin(begin);
    r.set_layer_end(end);
    r.set_is_first(begin == 0);
    r.set_is_last(end == 4);
    r.set_next_stage(next);
    r.set_stage_index(i);
    r.set_num_stages(2);
    r.set_kv_capacity_blocks(64);
    r.set_link_timeout_ms(20000);
    grpc::ClientContext context;
    xkv::v1::LoadStageResponse response;
    grpc::Status s = stubs_[i]->LoadStage(&context, r, &response);
    if (s.ok()) {
      EXPECT_EQ(response.model().n_layers(), 4);
      EXPECT_GT(response.weight_bytes(), 0);
      EXPECT_EQ(response.stage_capacity_blocks(), 64 * (end - begin));  // one pool, all layers
      EXPECT_EQ(response.kv_capacity_bytes(),
                response.stage_capacity_blocks() * response.block_bytes());
    }
    return s;
  }

  // The same request to both stages concurrently.
  std::vector<grpc::Status> Step(const xkv::v1::StepRequest& request,
                                 std::vector<xkv::v1::StepResponse>* responses) {
    responses->assign(2, {});
    std::vector<grpc::Status> status(2);
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i) {
      threads.emplace_back([&, i] {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        status[i] = stubs_[i]->Step(&context, request, &(*responses)[i]);
      });
    }
    for (std::thread& t : threads) t.join();
    return status;
  }

  std::vector<std::unique_ptr<WorkerServer>> servers_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<xkv::v1::Worker::Stub>> stubs_;
};

TEST_F(WorkerServiceTest, TwoWorkersOverGrpcMatchTheWholeModel) {
  EXPECT_EQ(HealthStatus(channels_[0], ""), 2);  // NOT_SERVING before LoadStage
  EXPECT_EQ(HealthStatus(channels_[0], "xkv.v1.Worker"), 2);
  {
    grpc::ClientContext context;
    xkv::v1::StepResponse response;
    EXPECT_EQ(stubs_[0]->Step(&context, {}, &response).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  ASSERT_TRUE(Load(1, 2, 4, "").ok());
  ASSERT_TRUE(Load(0, 0, 2, absl::StrCat("127.0.0.1:", servers_[1]->port())).ok());
  EXPECT_EQ(HealthStatus(channels_[0], ""), 1);
  EXPECT_EQ(HealthStatus(channels_[1], "xkv.v1.Worker"), 1);

  const std::vector<int32_t> prompt = RandomTokens(27, 11);
  std::unique_ptr<LlamaModel> model = LoadWholeModel();
  std::unique_ptr<KvCache> cache = model->NewCache();
  xkv::v1::StepRequest request;
  request.set_step_id(1);
  xkv::v1::StepSequence* s = request.add_sequences();
  s->set_seq_id(42);
  s->mutable_tokens()->Add(prompt.begin(), prompt.end());
  s->set_n_new(prompt.size());
  s->set_new_sequence(true);
  s->set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
  s->set_return_logits(true);
  std::vector<int32_t> tokens = prompt;
  int64_t position = 0;
  for (int iter = 0; iter < 3; ++iter) {
    std::vector<xkv::v1::StepResponse> responses;
    std::vector<grpc::Status> status = Step(request, &responses);
    ASSERT_TRUE(status[0].ok()) << status[0].error_message();
    ASSERT_TRUE(status[1].ok()) << status[1].error_message();
    BatchStep ref;
    ref.sequences = {{cache.get(), static_cast<int64_t>(tokens.size()), position}};
    auto want = model->Forward(tokens, ref);
    ASSERT_TRUE(want.ok());
    const xkv::v1::SequenceResult& got = responses[1].sequences(0);
    EXPECT_EQ(std::vector<float>(got.logits().begin(), got.logits().end()), *want);
    EXPECT_EQ(got.token(), Argmax(*want));
    EXPECT_EQ(responses[0].sequences(0).token(), -1);
    if (iter == 0) {  // both stages report gains for their own layers
      EXPECT_EQ(responses[0].sequences(0).observed().layers_size(), 2);
      EXPECT_EQ(responses[1].sequences(0).observed().layers(1).layer(), 3);
      EXPECT_EQ(got.observed().layers(0).gains_size(), 27 - 8);
    }
    position += tokens.size();
    tokens = {got.token()};
    s->clear_tokens();
    s->add_tokens(got.token());
    s->set_n_new(1);
    s->set_position(position);
    s->set_new_sequence(false);
    s->set_mode(xkv::v1::SEQUENCE_MODE_NORMAL);
    request.set_step_id(iter + 2);
  }
  {
    grpc::ClientContext context;
    xkv::v1::StatusResponse status;
    ASSERT_TRUE(stubs_[1]->Status(&context, {}, &status).ok());
    EXPECT_EQ(status.health(), xkv::v1::STAGE_HEALTH_SERVING);
    EXPECT_EQ(status.layer_begin(), 2);
    EXPECT_EQ(status.sequences(), 1);
    EXPECT_EQ(status.usage().blocks_used(), 2 * 2);  // 29 tokens: 2 blocks per layer
  }
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    xkv::v1::ReleaseRequest release;
    release.add_seq_ids(42);
    xkv::v1::ReleaseResponse response;
    ASSERT_TRUE(stubs_[i]->Release(&context, release, &response).ok());
    EXPECT_EQ(response.released(), 1);
    EXPECT_EQ(response.usage().blocks_used(), 0);
  }
}

TEST_F(WorkerServiceTest, ErrorsMapToStatusCodesAndTheNextStageDoesNotHang) {
  ASSERT_TRUE(Load(1, 2, 4, "").ok());
  ASSERT_TRUE(Load(0, 0, 2, absl::StrCat("127.0.0.1:", servers_[1]->port())).ok());
  xkv::v1::StepRequest request;
  request.set_step_id(7);
  xkv::v1::StepSequence* s = request.add_sequences();
  s->set_seq_id(1);
  s->mutable_tokens()->Add(100000);  // outside the vocab: stage 0 refuses and tells stage 1
  s->set_n_new(1);
  s->set_new_sequence(true);
  std::vector<xkv::v1::StepResponse> responses;
  std::vector<grpc::Status> status = Step(request, &responses);
  EXPECT_EQ(status[0].error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status[1].error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A bad layer range; a next stage that is down.
  EXPECT_EQ(Load(0, 3, 2, "").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  servers_[1]->Shutdown();
  ASSERT_TRUE(Load(0, 0, 2, absl::StrCat("127.0.0.1:", servers_[1]->port())).ok());
  request.mutable_sequences(0)->set_tokens(0, 5);
  grpc::ClientContext context;
  xkv::v1::StepResponse response;
  EXPECT_EQ(stubs_[0]->Step(&context, request, &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

xkv::v1::LoadStageRequest WholeOrTail(int begin) {
  xkv::v1::LoadStageRequest r;
  r.set_model_path(WorkerModelPath());
  r.set_layer_begin(begin);
  r.set_layer_end(4);
  r.set_is_first(begin == 0);
  r.set_is_last(true);
  r.set_stage_index(begin == 0 ? 0 : 1);
  r.set_num_stages(begin == 0 ? 1 : 2);
  r.set_kv_capacity_blocks(64);
  return r;
}

// The plaintext health-only server (for Kubernetes probes) reports the Worker server's health and
// serves nothing else; a stage that receives hidden rows is refused when one step of them cannot
// pass the message limit.
TEST(WorkerServerTest, HealthOnlyPortAndTheMessageLimit) {
  WorkerServerOptions o;
  o.listen = "127.0.0.1:0";
  o.health_listen = "127.0.0.1:0";
  o.service.limits.model_dir = ::testing::TempDir();
  o.service.limits.max_step_tokens = 8192;  // 8192 rows of 64 floats: 2 MiB
  o.service.limits.max_message_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->health_port(), 0);
  std::shared_ptr<grpc::Channel> health = Connect((*server)->health_port());
  EXPECT_EQ(HealthStatus(health, ""), 2);
  auto stub = xkv::v1::Worker::NewStub(Connect((*server)->port()));
  xkv::v1::LoadStageResponse response;
  {
    grpc::ClientContext context;
    const grpc::Status s = stub->LoadStage(&context, WholeOrTail(2), &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_NE(s.error_message().find("--max-message-mb"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(HealthStatus(health, "xkv.v1.Worker"), 2);
  {
    grpc::ClientContext context;  // a first stage receives no rows
    ASSERT_TRUE(stub->LoadStage(&context, WholeOrTail(0), &response).ok());
  }
  EXPECT_EQ(HealthStatus(health, ""), 1);
  EXPECT_EQ(HealthStatus(health, "xkv.v1.Worker"), 1);
  grpc::ClientContext context;
  xkv::v1::StatusResponse status;
  EXPECT_EQ(xkv::v1::Worker::NewStub(health)->Status(&context, {}, &status).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace xkv
