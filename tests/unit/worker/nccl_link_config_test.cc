// The NCCL data plane's LoadStage fields, without a GPU: validation of the id, rank, world size and
// device (INVALID_ARGUMENT naming the field), and the worker's answer to a malformed NCCL
// LoadStage — INVALID_ARGUMENT in builds with NCCL, UNIMPLEMENTED in builds without.
#include "worker/nccl_link_config.h"

#include <string>

#include "gtest/gtest.h"
#include "worker/grpc_status.h"
#include "worker/worker_service.h"

namespace xkv {
namespace {

xkv::v1::LoadStageRequest NcclRequest(int rank, int world) {
  xkv::v1::LoadStageRequest r;
  r.set_model_path("/nonexistent/model.gguf");  // never opened: validation comes first
  r.set_layer_begin(rank * 2);
  r.set_layer_end(rank * 2 + 2);
  r.set_is_first(rank == 0);
  r.set_is_last(rank == world - 1);
  r.set_stage_index(rank);
  r.set_num_stages(world);
  r.set_link_kind(xkv::v1::LINK_KIND_NCCL);
  r.set_nccl_unique_id(std::string(kNcclUniqueIdBytes, '\x01'));
  r.set_nccl_rank(rank);
  r.set_nccl_world_size(world);
  return r;
}

TEST(ParseCudaDeviceTest, AcceptsCudaOrdinals) {
  EXPECT_EQ(*ParseCudaDevice("cuda:0"), 0);
  EXPECT_EQ(*ParseCudaDevice("cuda:1"), 1);
  EXPECT_EQ(*ParseCudaDevice("cuda:15"), 15);
}

TEST(ParseCudaDeviceTest, RejectsEverythingElse) {
  for (const char* bad : {"cpu", "", "cuda", "cuda:", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1x",
                          "gpu:0", "CUDA:0", "cuda:99999999999"}) {
    EXPECT_EQ(ParseCudaDevice(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(NcclLinkConfigTest, WantsNcclForTheKindOrAnId) {
  xkv::v1::LoadStageRequest r;
  EXPECT_FALSE(WantsNcclLink(r));
  r.set_link_kind(xkv::v1::LINK_KIND_NCCL);
  EXPECT_TRUE(WantsNcclLink(r));
  r.set_link_kind(xkv::v1::LINK_KIND_GRPC);
  r.set_nccl_unique_id("x");
  EXPECT_TRUE(WantsNcclLink(r));
}

TEST(NcclLinkConfigTest, ValidRequest) {
  xkv::v1::LoadStageRequest r = NcclRequest(1, 2);
  absl::StatusOr<NcclLinkConfig> c = NcclLinkConfigFromProto(r, "cuda:1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->unique_id, r.nccl_unique_id());
  EXPECT_EQ(c->rank, 1);
  EXPECT_EQ(c->world_size, 2);
  EXPECT_EQ(c->device, 1);
  // An unspecified link kind with an id is NCCL too.
  r.set_link_kind(xkv::v1::LINK_KIND_UNSPECIFIED);
  EXPECT_TRUE(NcclLinkConfigFromProto(r, "cuda:0").ok());
}

// Each malformed field, with the text its error must name.
struct BadCase {
  const char* name;
  void (*mutate)(xkv::v1::LoadStageRequest&);
  const char* device;
  const char* expect_in_message;
};

const BadCase kBadCases[] = {
    {"short id", [](auto& r) { r.set_nccl_unique_id("abc"); }, "cuda:0", "nccl_unique_id"},
    {"long id", [](auto& r) { r.set_nccl_unique_id(std::string(129, 'z')); }, "cuda:0",
     "nccl_unique_id"},
    {"kind NCCL without id", [](auto& r) { r.clear_nccl_unique_id(); }, "cuda:0", "nccl_unique_id"},
    {"id with kind gRPC", [](auto& r) { r.set_link_kind(xkv::v1::LINK_KIND_GRPC); }, "cuda:0",
     "link_kind"},
    {"world 0", [](auto& r) { r.set_nccl_world_size(0); }, "cuda:0", "nccl_world_size"},
    {"rank >= world", [](auto& r) { r.set_nccl_rank(2); }, "cuda:0", "nccl_rank"},
    {"negative rank", [](auto& r) { r.set_nccl_rank(-1); }, "cuda:0", "nccl_rank"},
    {"rank != stage", [](auto& r) { r.set_nccl_rank(0); }, "cuda:0", "stage_index"},
    {"world != stages", [](auto& r) { r.set_num_stages(3); }, "cuda:0", "num_stages"},
    {"cpu worker", [](auto&) {}, "cpu", "cuda"},
};

TEST(NcclLinkConfigTest, MalformedFieldsAreInvalidArgument) {
  for (const BadCase& c : kBadCases) {
    xkv::v1::LoadStageRequest r = NcclRequest(1, 2);
    c.mutate(r);
    absl::Status s = NcclLinkConfigFromProto(r, c.device).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s;
    EXPECT_NE(s.message().find(c.expect_in_message), std::string::npos) << c.name << ": " << s;
  }
}

// The Worker service's LoadStage: the NCCL fields are checked before anything is loaded.
TEST(WorkerServiceNcclTest, MalformedNcclLoadStageIsRejected) {
#if defined(XKV_WITH_NCCL)
  constexpr grpc::StatusCode kWant = grpc::StatusCode::INVALID_ARGUMENT;
#else
  constexpr grpc::StatusCode kWant = grpc::StatusCode::UNIMPLEMENTED;
#endif
  for (const BadCase& c : kBadCases) {
    WorkerService service({.device = c.device, .num_threads = 1});
    xkv::v1::LoadStageRequest r = NcclRequest(1, 2);
    c.mutate(r);
    xkv::v1::LoadStageResponse response;
    const grpc::Status s = service.LoadStage(nullptr, &r, &response);
    EXPECT_EQ(s.error_code(), kWant) << c.name << ": " << s.error_message();
    EXPECT_EQ(service.executor(), nullptr) << c.name;
    xkv::v1::StatusResponse status;
    ASSERT_TRUE(service.Status(nullptr, nullptr, &status).ok());
    EXPECT_EQ(status.health(), xkv::v1::STAGE_HEALTH_FAILED) << c.name;
    EXPECT_FALSE(status.message().empty()) << c.name;
  }
}

TEST(WorkerServiceNcclTest, NcclOnACpuWorker) {
  WorkerService service({.device = "cpu", .num_threads = 1});
  xkv::v1::LoadStageRequest r = NcclRequest(0, 2);
  xkv::v1::LoadStageResponse response;
  const grpc::Status s = service.LoadStage(nullptr, &r, &response);
#if defined(XKV_WITH_NCCL)
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("--device cuda:N"), std::string::npos) << s.error_message();
#else
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  EXPECT_NE(s.error_message().find("--data-plane=grpc"), std::string::npos) << s.error_message();
#endif
}

}  // namespace
}  // namespace xkv
