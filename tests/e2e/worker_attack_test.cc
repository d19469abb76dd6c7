// The worker attacks of issue 18 against real `xkv worker` processes that run mutual TLS behind an
// `xkv coordinator` (certificates from scripts/make-dev-ca), over loopback with the real model:
//  - every attack from an unauthenticated client (plaintext; TLS without a client certificate;
//    TLS with a certificate from another CA) is refused, on both workers;
//  - a worker's certificate (same CA) may push hidden rows but not control a stage
//    (--tls-control-peer);
//  - the bounds hold for an authenticated peer too (a client with the coordinator's
//    certificate): link timeouts, n_new / positions against the context, the hidden-row size and
//    count, the message size, forwarded error codes, model_path outside --model-dir, a KV pool
//    beyond memory, a flood of hidden rows for steps that never run (the worker's memory stays
//    bounded), LoadStage requests refused after loading (the current stage keeps serving);
//  - a user's greedy generations through the coordinator while the attacks run, and after them,
//    give the same tokens as before, and both stages still serve with their capacity unchanged.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/e2e/e2e_harness.h"
#include "tests/e2e/e2e_prompts.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv::e2e {
namespace {

constexpr int64_t kHuge = int64_t{1} << 62;
constexpr int kHidden = 576;                         // SmolLM2-135M
constexpr int kMaxStepTokens = 2048;                 // the workers' --max-step-tokens
constexpr int kMaxMessageMb = 8;                     // the workers' --max-message-mb
constexpr uint64_t kAttackStep = uint64_t{1} << 60;  // far from the coordinator's step ids

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// scripts/make-dev-ca into `out`.
absl::Status MakeDevCa(const std::string& out, const std::string& log_dir) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> p = ChildProcess::Spawn(
      {XKV_E2E_SOURCE_DIR "/scripts/make-dev-ca", "--out", out}, log_dir, "make-dev-ca");
  if (!p.ok()) return p.status();
  absl::StatusOr<int> code = (*p)->Wait(absl::Seconds(60));
  if (!code.ok()) return code.status();
  if (*code != 0) return absl::InternalError("make-dev-ca failed: " + (*p)->Log());
  return absl::OkStatus();
}

std::vector<std::string> TlsFlags(const std::string& dir) {
  return {"--tls-cert=" + dir + "/tls.crt", "--tls-key=" + dir + "/tls.key",
          "--tls-ca=" + dir + "/ca.crt"};
}

// TLS client credentials: trusts `ca`; presents `cert_dir`'s certificate when given.
std::shared_ptr<grpc::ChannelCredentials> TlsClient(const std::string& ca,
                                                    const std::string& cert_dir = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(ca);
  if (!cert_dir.empty()) {
    o.pem_private_key = ReadFile(cert_dir + "/tls.key");
    o.pem_cert_chain = ReadFile(cert_dir + "/tls.crt");
  }
  return grpc::SslCredentials(o);
}

std::unique_ptr<xkv::v1::Worker::Stub> WorkerStub(
    const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  return xkv::v1::Worker::NewStub(grpc::CreateCustomChannel(address, credentials, args));
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(20)) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return c;
}

xkv::v1::PushHiddenRequest HiddenRows(uint64_t step, int rows, int from_stage = 0) {
  xkv::v1::PushHiddenRequest r;
  r.set_step_id(step);
  r.set_from_stage(from_stage);
  r.set_hidden(std::string(int64_t{rows} * kHidden * sizeof(float), '\x01'));
  return r;
}

xkv::v1::LoadStageRequest Load(const std::string& model_path, int64_t blocks,
                               const std::string& next = "") {
  xkv::v1::LoadStageRequest r;
  r.set_model_path(model_path);
  r.set_layer_begin(0);
  r.set_layer_end(15);
  r.set_is_first(true);
  r.set_next_stage(next);
  r.set_stage_index(0);
  r.set_num_stages(2);
  r.set_kv_capacity_blocks(blocks);
  return r;
}

xkv::v1::StepRequest OneStep(int64_t n_new, int64_t position, int64_t link_timeout_ms = 0) {
  xkv::v1::StepRequest r;
  r.set_step_id(kAttackStep);
  r.set_link_timeout_ms(link_timeout_ms);
  xkv::v1::StepSequence* s = r.add_sequences();
  s->set_seq_id(kAttackStep);
  s->set_new_sequence(true);
  s->set_n_new(n_new);
  s->set_position(position);
  s->add_tokens(1);
  return r;
}

struct Attack {
  std::string name;
  std::function<grpc::Status(xkv::v1::Worker::Stub&)> call;
};

// The attacks the probe ran from the worker port (issue 18, part 2).
std::vector<Attack> Attacks() {
  return {
      {"PushHidden error injection",
       [](auto& s) {
         xkv::v1::PushHiddenRequest r;
         r.set_step_id(1);
         r.set_error_code(3);
         r.set_error_message("injected");
         xkv::v1::PushHiddenResponse out;
         return s.PushHidden(Context().get(), r, &out);
       }},
      {"PushHidden fake rows",
       [](auto& s) {
         xkv::v1::PushHiddenResponse out;
         return s.PushHidden(Context().get(), HiddenRows(2, 1), &out);
       }},
      {"LoadStage re-pointing next_stage",
       [](auto& s) {
         xkv::v1::LoadStageResponse out;
         return s.LoadStage(Context().get(), Load(ModelPath(), 0, "127.0.0.1:1"), &out);
       }},
      {"Step with link_timeout_ms 2^62",
       [](auto& s) {
         xkv::v1::StepResponse out;
         return s.Step(Context().get(), OneStep(1, 0, kHuge), &out);
       }},
      {"Release of other sequences",
       [](auto& s) {
         xkv::v1::ReleaseRequest r;
         for (uint64_t id = 0; id < 1000; ++id) r.add_seq_ids(id);
         xkv::v1::ReleaseResponse out;
         return s.Release(Context().get(), r, &out);
       }},
      {"LoadStage shrinking the pool to 1 block",
       [](auto& s) {
         xkv::v1::LoadStageResponse out;
         return s.LoadStage(Context().get(), Load(ModelPath(), 1), &out);
       }},
      {"PushHidden for unused steps",
       [](auto& s) {
         xkv::v1::PushHiddenResponse out;
         return s.PushHidden(Context().get(), HiddenRows(kAttackStep + 7, 64), &out);
       }},
      {"LoadStage with 30M blocks",
       [](auto& s) {
         xkv::v1::LoadStageResponse out;
         return s.LoadStage(Context().get(), Load(ModelPath(), 30'000'000), &out);
       }},
      {"LoadStage model_path=/etc/passwd",
       [](auto& s) {
         xkv::v1::LoadStageResponse out;
         return s.LoadStage(Context().get(), Load("/etc/passwd", 0), &out);
       }},
      {"Status",
       [](auto& s) {
         xkv::v1::StatusResponse out;
         return s.Status(Context().get(), {}, &out);
       }},
  };
}

// Resident memory of a process, in bytes (VmRSS).
int64_t ResidentBytes(pid_t pid) {
  std::istringstream in(ReadFile(absl::StrCat("/proc/", pid, "/status")));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// A user's greedy generations through the coordinator, one after another, while attacks run.
class UserTraffic {
 public:
  explicit UserTraffic(Cluster& cluster)
      : thread_([this, &cluster] {
          do {
            results_.push_back(Generate(cluster.generation(), GreedyRequest(kLongPrompt, 8)));
          } while (!stop_);
        }) {}
  ~UserTraffic() {
    if (thread_.joinable()) Stop();
  }
  std::vector<StreamResult> Stop() {
    stop_ = true;
    thread_.join();
    return results_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<StreamResult> results_;
  std::thread thread_;  // last: starts once the members above exist
};

class WorkerAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string missing = MissingPrerequisite(); !missing.empty()) GTEST_SKIP() << missing;
    dir_ = MakeTempDir("xkv-attack-");
    ASSERT_TRUE(MakeDevCa(dir_ + "/ca", dir_).ok());
    ASSERT_TRUE(MakeDevCa(dir_ + "/rogue", dir_).ok());  // a CA the workers do not trust
    ClusterOptions o;
    o.workers = 2;
    o.worker_flags = TlsFlags(dir_ + "/ca/worker");
    o.worker_flags.push_back("--tls-control-peer=xkv-coordinator");
    o.worker_flags.push_back(absl::StrCat("--max-step-tokens=", kMaxStepTokens));
    o.worker_flags.push_back(absl::StrCat("--max-message-mb=", kMaxMessageMb));
    o.flags = TlsFlags(dir_ + "/ca/coordinator");
    absl::StatusOr<std::unique_ptr<Cluster>> c = Cluster::Start(o);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    absl::StatusOr<xkv::v1::GetClusterStatusResponse> status = cluster_->ClusterStatus();
    ASSERT_TRUE(status.ok()) << status.status();
    before_ = *status;
    ASSERT_EQ(before_.stages_size(), 2);
    baseline_ = Generate(cluster_->generation(), GreedyRequest(kLongPrompt, 8));
    ASSERT_TRUE(baseline_.status.ok()) << baseline_.status.error_message() << cluster_->Logs();
    ASSERT_FALSE(baseline_.token_ids.empty());
  }

  std::string address(int stage) const { return before_.stages(stage).address(); }

  // The user's generations during the attacks and one after them give the tokens of before, and
  // both stages still serve with the capacity the coordinator loaded.
  void ExpectUsersUnaffected(const std::vector<StreamResult>& during = {}) {
    for (const StreamResult& r : during) {
      ASSERT_TRUE(r.status.ok()) << r.status.error_message() << cluster_->Logs();
      EXPECT_EQ(r.token_ids, baseline_.token_ids);
    }
    StreamResult again = Generate(cluster_->generation(), GreedyRequest(kLongPrompt, 8));
    ASSERT_TRUE(again.status.ok()) << again.status.error_message() << cluster_->Logs();
    EXPECT_EQ(again.token_ids, baseline_.token_ids);
    absl::StatusOr<xkv::v1::GetClusterStatusResponse> after = cluster_->ClusterStatus();
    ASSERT_TRUE(after.ok()) << after.status();
    for (int i = 0; i < 2; ++i) {
      const xkv::v1::StageStatus &b = before_.stages(i), &a = after->stages(i);
      EXPECT_EQ(a.health(), xkv::v1::HEALTH_STATE_SERVING) << i;
      EXPECT_EQ(a.kv_bytes_capacity(), b.kv_bytes_capacity()) << i;
      EXPECT_EQ(a.layer_begin(), b.layer_begin()) << i;
      EXPECT_EQ(a.blocks_used(), 0) << i;  // nothing leaked, nothing injected
    }
  }

  std::string dir_;
  std::unique_ptr<Cluster> cluster_;
  xkv::v1::GetClusterStatusResponse before_;
  StreamResult baseline_;
};

TEST_F(WorkerAttackTest, UnauthenticatedClientsAreRefusedEverything) {
  const std::string ca = dir_ + "/ca/ca.crt";
  const std::vector<std::pair<std::string, std::shared_ptr<grpc::ChannelCredentials>>> clients = {
      {"plaintext", grpc::InsecureChannelCredentials()},
      {"TLS without a client certificate", TlsClient(ca)},
      {"TLS with a certificate of another CA", TlsClient(ca, dir_ + "/rogue/coordinator")},
  };
  UserTraffic users(*cluster_);
  for (int stage = 0; stage < 2; ++stage) {
    for (const auto& [client, credentials] : clients) {
      std::unique_ptr<xkv::v1::Worker::Stub> stub = WorkerStub(address(stage), credentials);
      for (const Attack& attack : Attacks()) {
        const grpc::Status s = attack.call(*stub);
        EXPECT_TRUE(s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                    s.error_code() == grpc::StatusCode::UNAUTHENTICATED)
            << "stage " << stage << ", " << client << ", " << attack.name << ": " << s.error_code()
            << " " << s.error_message();
      }
    }
  }
  // The same calls with the CA's certificate get through the TLS handshake (a control: the
  // refusals above are the authentication's).
  std::unique_ptr<xkv::v1::Worker::Stub> authenticated =
      WorkerStub(address(1), TlsClient(ca, dir_ + "/ca/coordinator"));
  xkv::v1::StatusResponse status;
  ASSERT_TRUE(authenticated->Status(Context().get(), {}, &status).ok());
  EXPECT_EQ(status.health(), xkv::v1::STAGE_HEALTH_SERVING);
  const std::vector<StreamResult> during = users.Stop();
  EXPECT_FALSE(during.empty());
  ExpectUsersUnaffected(during);
}

TEST_F(WorkerAttackTest, BoundsHoldForAnAuthenticatedPeer) {
  const std::string ca = dir_ + "/ca/ca.crt";
  auto peer = [&](int stage) {
    return WorkerStub(address(stage), TlsClient(ca, dir_ + "/ca/coordinator"));
  };
  auto expect = [](const grpc::Status& s, grpc::StatusCode code, const std::string& mention,
                   const std::string& what) {
    EXPECT_EQ(s.error_code(), code) << what << ": " << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), mention))
        << what << ": '" << s.error_message() << "' lacks '" << mention << "'";
  };
  std::unique_ptr<xkv::v1::Worker::Stub> first = peer(0), second = peer(1);
  UserTraffic users(*cluster_);
  xkv::v1::StepResponse step;
  const absl::Time t0 = absl::Now();
  expect(second->Step(Context().get(), OneStep(1, 0, kHuge), &step),
         grpc::StatusCode::INVALID_ARGUMENT, "link_timeout_ms 4611686018427387904", "stall");
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  expect(first->Step(Context().get(), OneStep(int64_t{1} << 40, 0), &step),
         grpc::StatusCode::INVALID_ARGUMENT, "n_new", "n_new 2^40");
  expect(first->Step(Context().get(), OneStep(1, kHuge), &step), grpc::StatusCode::INVALID_ARGUMENT,
         "position", "position 2^62");
  xkv::v1::StepRequest scored = OneStep(1, 0);  // a request's window scoring: an odd kernel <= 63
  scored.mutable_sequences(0)->set_mode(xkv::v1::SEQUENCE_MODE_OBSERVE);
  scored.mutable_sequences(0)->mutable_scoring()->set_pool_kernel(2147483647);
  expect(first->Step(Context().get(), scored, &step), grpc::StatusCode::INVALID_ARGUMENT,
         "scoring.pool_kernel is 2147483647; it must be an odd number in [1, 63]", "kernel 2^31-1");

  xkv::v1::PushHiddenResponse pushed;
  expect(second->PushHidden(Context().get(), HiddenRows(kAttackStep, 1, /*from_stage=*/1), &pushed),
         grpc::StatusCode::INVALID_ARGUMENT, "from_stage 1", "rows from the wrong stage");
  expect(second->PushHidden(Context().get(), HiddenRows(kAttackStep, kMaxStepTokens + 1), &pushed),
         grpc::StatusCode::INVALID_ARGUMENT, "--max-step-tokens", "too many rows");
  const int over_limit_rows = (kMaxMessageMb << 20) / (kHidden * 4) + 1;
  EXPECT_EQ(second->PushHidden(Context().get(), HiddenRows(kAttackStep, over_limit_rows), &pushed)
                .error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  xkv::v1::PushHiddenRequest error;
  error.set_step_id(kAttackStep);
  error.set_error_code(999);
  expect(second->PushHidden(Context().get(), error, &pushed), grpc::StatusCode::INVALID_ARGUMENT,
         "error_code 999", "unknown error code");

  xkv::v1::LoadStageResponse loaded;
  const grpc::Status passwd = first->LoadStage(Context().get(), Load("/etc/passwd", 0), &loaded);
  expect(passwd, grpc::StatusCode::INVALID_ARGUMENT, "--model-dir", "/etc/passwd");
  EXPECT_FALSE(absl::StrContains(passwd.error_message(), "magic")) << passwd.error_message();
  EXPECT_FALSE(absl::StrContains(passwd.error_message(), "0x")) << passwd.error_message();
  expect(first->LoadStage(Context().get(), Load(ModelPath(), 30'000'000), &loaded),
         grpc::StatusCode::RESOURCE_EXHAUSTED, "--max-kv-bytes", "30M blocks");
  // Loads refused only once the new stage is built: the current stage keeps serving (users'
  // streams running meanwhile included; ExpectUsersUnaffected below).
  expect(first->LoadStage(Context().get(), Load(ModelPath(), 0, /*next=*/""), &loaded),
         grpc::StatusCode::INVALID_ARGUMENT, "needs next_stage", "a first stage without a next");
  xkv::v1::LoadStageRequest not_last = Load(ModelPath(), 0, address(1));
  not_last.set_is_last(true);
  expect(first->LoadStage(Context().get(), not_last, &loaded), grpc::StatusCode::INVALID_ARGUMENT,
         "is_last", "is_last for layers [0, 15)");
  xkv::v1::StatusResponse first_status;
  ASSERT_TRUE(first->Status(Context().get(), {}, &first_status).ok());
  EXPECT_EQ(first_status.health(), xkv::v1::STAGE_HEALTH_SERVING);

  // Another worker's certificate (same CA) may push hidden rows but not control a stage.
  std::unique_ptr<xkv::v1::Worker::Stub> other_worker =
      WorkerStub(address(1), TlsClient(ca, dir_ + "/ca/worker"));
  EXPECT_TRUE(
      other_worker->PushHidden(Context().get(), HiddenRows(kAttackStep + 1, 1), &pushed).ok());
  xkv::v1::ReleaseRequest release;
  release.add_seq_ids(1);
  xkv::v1::ReleaseResponse released;
  expect(other_worker->Release(Context().get(), release, &released),
         grpc::StatusCode::PERMISSION_DENIED, "--tls-control-peer", "Release from a worker");
  expect(other_worker->LoadStage(Context().get(), Load(ModelPath(), 1), &loaded),
         grpc::StatusCode::PERMISSION_DENIED, "--tls-control-peer", "LoadStage from a worker");
  expect(other_worker->Step(Context().get(), OneStep(1, 0), &step),
         grpc::StatusCode::PERMISSION_DENIED, "--tls-control-peer", "Step from a worker");

  const std::vector<StreamResult> during = users.Stop();
  EXPECT_FALSE(during.empty());

  // A flood of hidden rows for steps that never run: accepted into a bounded mailbox (the oldest
  // are pushed out, the rest expire), so the worker's memory does not grow with the flood. (Not
  // under user traffic: a flooding peer holds a worker certificate and could push the user's rows
  // out; the bound is on memory.)
  const pid_t pid = cluster_->worker(1).pid();
  const int64_t rss_before = ResidentBytes(pid);
  constexpr int kFlood = 400, kRows = 512;  // 400 x 1.2 MB = 472 MB if nothing were dropped
  for (int i = 0; i < kFlood; ++i) {
    ASSERT_TRUE(
        second->PushHidden(Context().get(), HiddenRows(kAttackStep + 100 + i, kRows), &pushed)
            .ok());
  }
  const int64_t growth = ResidentBytes(pid) - rss_before;
  EXPECT_LT(growth, int64_t{200} << 20) << "worker 1 grew by " << growth << " bytes";
  std::printf("worker 1 resident memory after %d pushes of %d rows: %+.1f MiB\n", kFlood, kRows,
              growth / 1048576.0);
  ExpectUsersUnaffected(during);
}

}  // namespace
}  // namespace xkv::e2e
