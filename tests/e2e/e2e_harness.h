// End-to-end harness: real `xkv` processes on loopback (architecture.md §1, §8.8).
//
// ChildProcess forks + execs one process with its stdout/stderr in files, dies with the test
// (PR_SET_PDEATHSIG) and is always stopped by its destructor (SIGTERM, then SIGKILL). Cluster
// starts `xkv worker` processes and an `xkv coordinator` (or an embedded `xkv serve`) on ephemeral
// ports (port 0; the chosen ports are read back from the processes' logs) and waits for the Admin
// service to answer — bounded polls, never fixed sleeps.
//
// Paths: $XKV_BIN (the xkv binary) and $XKV_MODEL (the GGUF file), defaulting to the build's
// binary and models/SmolLM2-135M-Instruct.Q4_1.gguf (compiled in by tests/e2e/CMakeLists.txt).
#ifndef XKV_TESTS_E2E_E2E_HARNESS_H_
#define XKV_TESTS_E2E_E2E_HARNESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "xkv/v1/admin.grpc.pb.h"
#include "xkv/v1/generation.grpc.pb.h"
#include "xkv/v1/worker.grpc.pb.h"

namespace xkv::e2e {

// The xkv binary and model paths from the environment ("" when unset).
std::string XkvBinary();
std::string ModelPath();
// Non-empty: why the e2e tests cannot run here (binary or model missing).
std::string MissingPrerequisite();

class ChildProcess {
 public:
  // Starts argv[0] with `argv`; stdout goes to <dir>/<name>.out, stderr to <dir>/<name>.log.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                             const std::string& dir,
                                                             const std::string& name);
  ~ChildProcess();  // Stop()

  pid_t pid() const { return pid_; }
  bool Alive();
  void Signal(int sig);
  // Waits for the exit; DEADLINE_EXCEEDED when still running after `timeout`. Returns the exit
  // code (128 + signal when killed).
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // SIGTERM, up to `grace` for the exit, then SIGKILL. Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(5));
  std::string Stdout() const;
  std::string Log() const;
  // Polls the log until `pattern` (std::regex, ECMAScript) matches; returns its capture groups as
  // ints. Fails early when the process exits.
  absl::StatusOr<std::vector<int>> WaitForLog(const std::string& pattern, absl::Duration timeout);

 private:
  ChildProcess(pid_t pid, std::string out, std::string log) : pid_(pid), out_(out), log_(log) {}
  pid_t pid_;
  bool reaped_ = false;
  int exit_code_ = -1;
  std::string out_, log_;
};

struct ClusterOptions {
  int workers = 2;                        // `xkv worker` processes behind an `xkv coordinator`
  bool embedded = false;                  // instead: one `xkv serve --stages workers`
  std::vector<std::string> flags;         // extra coordinator/serve flags ("--policy=full", …)
  std::vector<std::string> worker_flags;  // extra `xkv worker` flags ("--tls-cert=…", …)
  std::string admin_token = "e2e-secret";
  absl::Duration start_timeout = absl::Seconds(120);
  // The coordinator starts first (on reserved worker ports) and the workers only once it logged
  // that it waits for them: pods may start in any order.
  bool workers_after_coordinator = false;
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterOptions& options);
  ~Cluster();

  const std::string& address() const { return address_; }  // Generation
  const std::string& admin_address() const { return admin_address_; }
  xkv::v1::Generation::Stub& generation() { return *generation_; }
  xkv::v1::Admin::Stub& admin() { return *admin_; }
  const std::string& admin_token() const { return options_.admin_token; }
  ChildProcess& worker(int i) { return *workers_[i]; }
  ChildProcess& coordinator() { return *coordinator_; }
  int num_workers() const { return static_cast<int>(workers_.size()); }
  std::string worker_address(int i) const;
  // Worker i's own Status (xkv.v1.Worker), bounded by `timeout`.
  absl::StatusOr<xkv::v1::StatusResponse> WorkerStatus(int i,
                                                       absl::Duration timeout = absl::Seconds(5));
  // Starts worker i again on its old port (after it was killed), with `flags` added to
  // ClusterOptions::worker_flags for this start only.
  absl::Status RestartWorker(int i, const std::vector<std::string>& flags = {});
  // Every process's log, for failure messages.
  std::string Logs() const;

  // An admin call context with the bearer token and a deadline.
  std::unique_ptr<grpc::ClientContext> AdminContext(absl::Duration timeout = absl::Seconds(30));
  absl::StatusOr<xkv::v1::GetClusterStatusResponse> ClusterStatus();

 private:
  explicit Cluster(const ClusterOptions& options) : options_(options) {}
  absl::Status StartWorker(int i, int port, const std::vector<std::string>& flags = {});
  absl::Status WaitAdminReady(absl::Duration timeout);

  ClusterOptions options_;
  std::string dir_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::vector<int> worker_ports_;
  int restarts_ = 0;
  std::unique_ptr<ChildProcess> coordinator_;
  std::string address_, admin_address_;
  std::unique_ptr<xkv::v1::Generation::Stub> generation_;
  std::unique_ptr<xkv::v1::Admin::Stub> admin_;
};

// One streamed Generate call, collected.
struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> token_ids;
  std::optional<xkv::v1::Usage> usage;
  int chunks = 0;
  absl::Duration elapsed;
  absl::Time finished;  // when the call ended
};

// Calls Generate with a deadline; `on_chunk` (optional) sees every response with the call's
// context (to cancel it, for instance).
StreamResult Generate(xkv::v1::Generation::Stub& stub, const xkv::v1::GenerateRequest& request,
                      absl::Duration deadline = absl::Seconds(120),
                      const std::function<void(const xkv::v1::GenerateResponse&,
                                               grpc::ClientContext&)>& on_chunk = nullptr);

// grpc.health.v1.Health/Check by hand (the health stubs are not installed): the ServingStatus
// number (1 SERVING, 2 NOT_SERVING), or -1 when the call fails (e.g. past `timeout`).
int HealthStatus(const std::string& address, const std::string& service = "",
                 absl::Duration timeout = absl::Seconds(5));

// A unary call of `method` ("/pkg.Service/Method") with raw request bytes (no client-side
// serialization, so malformed messages reach the server); returns the call's status.
grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& request_bytes, absl::Duration timeout = absl::Seconds(10));

// Every stage's KV blocks in use (GetClusterStatus); an error when a stage is not serving.
absl::StatusOr<std::vector<int64_t>> IdleBlocks(Cluster& cluster);
// True once every stage serves and holds `idle` blocks again (polled for up to `timeout`); else
// logs what the stages hold.
bool BackToIdleBlocks(Cluster& cluster, const std::vector<int64_t>& idle,
                      absl::Duration timeout = absl::Seconds(20));

// Polls `done` (each 20 ms) until it is true or `timeout` passed; returns its last value.
bool PollUntil(const std::function<bool()>& done, absl::Duration timeout);

// Generate calls on threads of their own (the load of a fault test); counts the streams that
// produced their first chunk.
class BackgroundStreams {
 public:
  explicit BackgroundStreams(xkv::v1::Generation::Stub& stub) : stub_(stub) {}
  ~BackgroundStreams() { Join(); }
  void Start(const xkv::v1::GenerateRequest& request, absl::Duration deadline);
  // True once `n` streams produced a chunk (polled up to `timeout`).
  bool WaitStreaming(int n, absl::Duration timeout);
  // Waits for every call; their results in Start order.
  std::vector<StreamResult> Join();

 private:
  xkv::v1::Generation::Stub& stub_;
  std::deque<StreamResult> results_;  // stable addresses for the threads
  std::vector<std::thread> threads_;
  std::atomic<int> streaming_{0};
};

// A greedy raw-prompt request.
xkv::v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_tokens,
                                       const std::string& policy = "",
                                       std::optional<double> budget_fraction = std::nullopt);

// The in-process engine's greedy answer: `xkv generate --temperature 0` (stdout, without the
// trailing newline).
absl::StatusOr<std::string> ReferenceGenerate(const std::string& prompt, int max_tokens,
                                              const std::string& dir);

// A fresh temporary directory for one test's logs.
std::string MakeTempDir(const std::string& prefix);

}  // namespace xkv::e2e

#endif  // XKV_TESTS_E2E_E2E_HARNESS_H_
