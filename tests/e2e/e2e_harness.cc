#include "tests/e2e/e2e_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace xkv::e2e {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0;
}

// The poll interval of every bounded wait below.
void PollPause() { std::this_thread::sleep_for(std::chrono::milliseconds(25)); }

}  // namespace

#ifndef XKV_E2E_BIN
#define XKV_E2E_BIN ""
#endif
#ifndef XKV_E2E_MODEL
#define XKV_E2E_MODEL ""
#endif

std::string XkvBinary() {
  const std::string env = Env("XKV_BIN");
  return env.empty() ? XKV_E2E_BIN : env;
}
std::string ModelPath() {
  const std::string env = Env("XKV_MODEL");
  return env.empty() ? XKV_E2E_MODEL : env;
}

std::string MissingPrerequisite() {
  if (!FileExists(XkvBinary())) return "XKV_BIN does not name the xkv binary";
  if (!FileExists(ModelPath())) return "XKV_MODEL is missing (run scripts/fetch-model)";
  return "";
}

std::string MakeTempDir(const std::string& prefix) {
  std::string base = Env("TMPDIR");
  if (base.empty()) base = "/tmp";
  std::string templ = absl::StrCat(base, "/", prefix, "XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  const char* made = mkdtemp(buf.data());
  return made != nullptr ? std::string(made) : base;
}

// ---- ChildProcess ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    const std::vector<std::string>& argv, const std::string& dir, const std::string& name) {
  if (argv.empty()) return absl::InvalidArgumentError("spawn: empty argv");
  const std::string out = absl::StrCat(dir, "/", name, ".out");
  const std::string log = absl::StrCat(dir, "/", name, ".log");
  const int out_fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out_fd < 0 || log_fd < 0) {
    if (out_fd >= 0) close(out_fd);
    if (log_fd >= 0) close(log_fd);
    return absl::InternalError(absl::StrCat("spawn: cannot create logs in ", dir));
  }
  // Everything the child touches is prepared before fork (the parent has gRPC threads).
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(out_fd);
    close(log_fd);
    return absl::InternalError("spawn: fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(out_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out_fd);
  close(log_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out, log));
}

ChildProcess::~ChildProcess() { Stop(); }

bool ChildProcess::Alive() {
  if (reaped_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  reaped_ = true;
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return false;
}

void ChildProcess::Signal(int sig) {
  if (Alive()) kill(pid_, sig);
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Alive()) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ", absl::FormatDuration(timeout)));
    }
    PollPause();
  }
  return exit_code_;
}

void ChildProcess::Stop(absl::Duration grace) {
  if (!Alive()) return;
  kill(pid_, SIGTERM);
  if (Wait(grace).ok()) return;
  kill(pid_, SIGKILL);
  (void)Wait(absl::Seconds(30));
}

std::string ChildProcess::Stdout() const { return ReadFile(out_); }
std::string ChildProcess::Log() const { return ReadFile(log_); }

absl::StatusOr<std::vector<int>> ChildProcess::WaitForLog(const std::string& pattern,
                                                          absl::Duration timeout) {
  const std::regex re(pattern);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const std::string log = Log();
    std::smatch m;
    if (std::regex_search(log, m, re)) {
      std::vector<int> groups;
      for (size_t i = 1; i < m.size(); ++i) groups.push_back(std::atoi(m[i].str().c_str()));
      return groups;
    }
    if (!Alive()) {
      return absl::UnavailableError(absl::StrCat("process exited (code ", exit_code_,
                                                 ") before logging /", pattern, "/; its log:\n",
                                                 log));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no /", pattern, "/ in the log after ",
                                                      absl::FormatDuration(timeout), "; the log:\n",
                                                      log));
    }
    PollPause();
  }
}

// ---- Cluster --------------------------------------------------------------------------------

namespace {

// A loopback port that was free a moment ago (bound to port 0, read back, released).
absl::StatusOr<int> ReservePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  if (!ok) return absl::InternalError("could not reserve a loopback port");
  return static_cast<int>(ntohs(a.sin_port));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const ClusterOptions& options) {
  if (std::string missing = MissingPrerequisite(); !missing.empty()) {
    return absl::FailedPreconditionError(missing);
  }
  std::unique_ptr<Cluster> c(new Cluster(options));
  c->dir_ = MakeTempDir("xkv-e2e-");
  std::vector<std::string> argv = {XkvBinary()};
  if (options.embedded) {
    argv.insert(argv.end(), {"serve", absl::StrCat("--stages=", options.workers), "--threads=1"});
  } else {
    std::vector<std::string> addresses;
    for (int i = 0; i < options.workers; ++i) {
      c->workers_.emplace_back();
      c->worker_ports_.push_back(0);
      if (options.workers_after_coordinator) {
        absl::StatusOr<int> port = ReservePort();
        if (!port.ok()) return port.status();
        c->worker_ports_[i] = *port;
      } else if (absl::Status s = c->StartWorker(i, 0); !s.ok()) {
        return s;
      }
      addresses.push_back(absl::StrCat("127.0.0.1:", c->worker_ports_[i]));
    }
    argv.insert(argv.end(), {"coordinator", "--workers=" + absl::StrJoin(addresses, ",")});
  }
  argv.insert(argv.end(), {"--model=" + ModelPath(), "--listen=127.0.0.1:0",
                           "--admin-listen=127.0.0.1:0", "--admin-token=" + options.admin_token});
  argv.insert(argv.end(), options.flags.begin(), options.flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> p = ChildProcess::Spawn(argv, c->dir_, "coord");
  if (!p.ok()) return p.status();
  c->coordinator_ = *std::move(p);
  if (options.workers_after_coordinator && !options.embedded) {
    absl::StatusOr<std::vector<int>> waiting = c->coordinator_->WaitForLog(
        R"(waiting for the workers \(attempt (\d+)\))", options.start_timeout);
    if (!waiting.ok()) return waiting.status();
    for (int i = 0; i < options.workers; ++i) {
      if (absl::Status s = c->StartWorker(i, c->worker_ports_[i]); !s.ok()) return s;
    }
  }
  absl::StatusOr<std::vector<int>> ports = c->coordinator_->WaitForLog(
      R"(serving Generation on port (\d+), Admin on port (\d+))", options.start_timeout);
  if (!ports.ok()) {
    return absl::Status(ports.status().code(),
                        absl::StrCat("coordinator: ", ports.status().message(), c->Logs()));
  }
  c->address_ = absl::StrCat("127.0.0.1:", (*ports)[0]);
  c->admin_address_ = absl::StrCat("127.0.0.1:", (*ports)[1]);
  c->generation_ = xkv::v1::Generation::NewStub(
      grpc::CreateChannel(c->address_, grpc::InsecureChannelCredentials()));
  c->admin_ = xkv::v1::Admin::NewStub(
      grpc::CreateChannel(c->admin_address_, grpc::InsecureChannelCredentials()));
  if (absl::Status s = c->WaitAdminReady(absl::Seconds(30)); !s.ok()) return s;
  return c;
}

Cluster::~Cluster() {
  // Coordinator first (it would otherwise see its workers vanish), then the workers.
  if (coordinator_) coordinator_->Stop();
  for (auto& w : workers_) {
    if (w) w->Stop();
  }
}

absl::Status Cluster::StartWorker(int i, int port, const std::vector<std::string>& flags) {
  const std::string name =
      restarts_ == 0 ? absl::StrCat("worker", i) : absl::StrCat("worker", i, "-restart", restarts_);
  std::vector<std::string> argv = {XkvBinary(), "worker", absl::StrCat("--listen=127.0.0.1:", port),
                                   "--threads=1",
                                   "--model-dir=" + ModelPath().substr(0, ModelPath().rfind('/'))};
  argv.insert(argv.end(), options_.worker_flags.begin(), options_.worker_flags.end());
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> p = ChildProcess::Spawn(argv, dir_, name);
  if (!p.ok()) return p.status();
  workers_[i] = *std::move(p);
  absl::StatusOr<std::vector<int>> ports =
      workers_[i]->WaitForLog(R"(\(port (\d+)\))", options_.start_timeout);
  if (!ports.ok()) return ports.status();
  worker_ports_[i] = (*ports)[0];
  return absl::OkStatus();
}

absl::Status Cluster::RestartWorker(int i, const std::vector<std::string>& flags) {
  workers_[i]->Stop();
  ++restarts_;
  return StartWorker(i, worker_ports_[i], flags);
}

absl::Status Cluster::WaitAdminReady(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto ctx = AdminContext(absl::Seconds(5));
    xkv::v1::GetConfigResponse r;
    grpc::Status s = admin_->GetConfig(ctx.get(), {}, &r);
    if (s.ok()) return absl::OkStatus();
    if (absl::Now() >= deadline || !coordinator_->Alive()) {
      return absl::UnavailableError(
          absl::StrCat("Admin.GetConfig never answered: ", s.error_message(), Logs()));
    }
    PollPause();
  }
}

std::string Cluster::Logs() const {
  std::string out;
  if (coordinator_) absl::StrAppend(&out, "\n--- coordinator log ---\n", coordinator_->Log());
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i]) absl::StrAppend(&out, "\n--- worker ", i, " log ---\n", workers_[i]->Log());
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Cluster::AdminContext(absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Bearer " + options_.admin_token);
  ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return ctx;
}

absl::StatusOr<xkv::v1::GetClusterStatusResponse> Cluster::ClusterStatus() {
  auto ctx = AdminContext();
  xkv::v1::GetClusterStatusResponse r;
  grpc::Status s = admin_->GetClusterStatus(ctx.get(), {}, &r);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  return r;
}

std::string Cluster::worker_address(int i) const {
  return absl::StrCat("127.0.0.1:", worker_ports_[i]);
}

absl::StatusOr<xkv::v1::StatusResponse> Cluster::WorkerStatus(int i, absl::Duration timeout) {
  auto stub = xkv::v1::Worker::NewStub(
      grpc::CreateChannel(worker_address(i), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  xkv::v1::StatusResponse r;
  grpc::Status s = stub->Status(&ctx, {}, &r);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  return r;
}

// ---- Requests -------------------------------------------------------------------------------

namespace {

grpc::Status RawUnary(const std::string& address, const std::string& method,
                      const std::string& request, absl::Duration timeout, std::string* response) {
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  std::vector<grpc::Slice> slices;
  if (status.ok() && out.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      response->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return status;
}

}  // namespace

int HealthStatus(const std::string& address, const std::string& service, absl::Duration timeout) {
  std::string request;
  if (!service.empty()) {
    request = absl::StrCat("\x0a", std::string(1, static_cast<char>(service.size())), service);
  }
  std::string bytes;
  if (!RawUnary(address, "/grpc.health.v1.Health/Check", request, timeout, &bytes).ok()) return -1;
  if (bytes.empty()) return 0;
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
}

grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& request_bytes, absl::Duration timeout) {
  std::string ignored;
  return RawUnary(address, method, request_bytes, timeout, &ignored);
}

absl::StatusOr<std::vector<int64_t>> IdleBlocks(Cluster& cluster) {
  absl::StatusOr<xkv::v1::GetClusterStatusResponse> st = cluster.ClusterStatus();
  if (!st.ok()) return st.status();
  std::vector<int64_t> blocks;
  for (const xkv::v1::StageStatus& stage : st->stages()) {
    if (stage.health() != xkv::v1::HEALTH_STATE_SERVING) {
      return absl::UnavailableError(absl::StrCat("stage ", stage.index(), " is not serving"));
    }
    blocks.push_back(stage.blocks_used());
  }
  return blocks;
}

bool BackToIdleBlocks(Cluster& cluster, const std::vector<int64_t>& idle, absl::Duration timeout) {
  absl::StatusOr<std::vector<int64_t>> now;
  const bool back = PollUntil(
      [&] {
        now = IdleBlocks(cluster);
        return now.ok() && *now == idle;
      },
      timeout);
  if (!back) {
    std::fprintf(
        stderr, "KV blocks in use per stage: want %s, have %s\n", absl::StrJoin(idle, ",").c_str(),
        now.ok() ? absl::StrJoin(*now, ",").c_str() : std::string(now.status().message()).c_str());
  }
  return back;
}

bool PollUntil(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (done()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
}

StreamResult Generate(
    xkv::v1::Generation::Stub& stub, const xkv::v1::GenerateRequest& request,
    absl::Duration deadline,
    const std::function<void(const xkv::v1::GenerateResponse&, grpc::ClientContext&)>& on_chunk) {
  StreamResult out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<xkv::v1::GenerateResponse>> reader =
      stub.Generate(&ctx, request);
  xkv::v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    ++out.chunks;
    out.text += resp.text();
    out.token_ids.insert(out.token_ids.end(), resp.token_ids().begin(), resp.token_ids().end());
    if (resp.has_usage()) out.usage = resp.usage();
    if (on_chunk) on_chunk(resp, ctx);
  }
  out.status = reader->Finish();
  out.finished = absl::Now();
  out.elapsed = out.finished - start;
  return out;
}

void BackgroundStreams::Start(const xkv::v1::GenerateRequest& request, absl::Duration deadline) {
  StreamResult* out = &results_.emplace_back();
  threads_.emplace_back([this, request, deadline, out] {
    bool counted = false;
    *out = Generate(stub_, request, deadline,
                    [&](const xkv::v1::GenerateResponse&, grpc::ClientContext&) {
                      if (!counted) counted = true, ++streaming_;
                    });
  });
}

bool BackgroundStreams::WaitStreaming(int n, absl::Duration timeout) {
  return PollUntil([&] { return streaming_.load() >= n; }, timeout);
}

std::vector<StreamResult> BackgroundStreams::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  return std::vector<StreamResult>(results_.begin(), results_.end());
}

xkv::v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_tokens,
                                       const std::string& policy,
                                       std::optional<double> budget_fraction) {
  xkv::v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  if (!policy.empty()) r.mutable_kv_policy()->set_policy(policy);
  if (budget_fraction.has_value()) r.mutable_kv_policy()->set_budget_fraction(*budget_fraction);
  return r;
}

absl::StatusOr<std::string> ReferenceGenerate(const std::string& prompt, int max_tokens,
                                              const std::string& dir) {
  static int counter = 0;
  absl::StatusOr<std::unique_ptr<ChildProcess>> p = ChildProcess::Spawn(
      {XkvBinary(), "generate", "--model=" + ModelPath(), "--prompt=" + prompt,
       absl::StrCat("--max-tokens=", max_tokens), "--temperature=0", "--threads=1"},
      dir, absl::StrCat("generate", counter++));
  if (!p.ok()) return p.status();
  absl::StatusOr<int> code = (*p)->Wait(absl::Seconds(180));
  if (!code.ok()) return code.status();
  if (*code != 0) {
    return absl::InternalError(absl::StrCat("xkv generate exited ", *code, ": ", (*p)->Log()));
  }
  std::string text = (*p)->Stdout();
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

}  // namespace xkv::e2e
