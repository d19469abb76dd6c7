// `xkv client`: calls the coordinator's public APIs.
//   xkv client generate --server ADDR --prompt TEXT [--chat] …   streams text to stdout, XKV stats
//                                                                to stderr
//   xkv client admin <rpc> --server ADDR [--token T] …            prints the response as JSON
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_split.h"
#include "allocator/kv_spec.h"
#include "google/protobuf/util/json_util.h"
#include "tools/commands.h"
#include "tools/flag_set.h"
#include "xkv/v1/admin.grpc.pb.h"
#include "xkv/v1/generation.grpc.pb.h"

namespace xkv {
namespace {

struct ClientFlags {
  std::string server = "127.0.0.1:50051";
  std::string prompt, system, stop, policy, profile, token;
  std::optional<bool> per_head;  // --per-head, parsed by allocator/kv_spec.h's ParsePerHead
  std::string per_head_text;
  bool chat = false, ignore_eos = false, dry_run = false, resume = false, quiet = false;
  int64_t max_tokens = 128, top_k = 0, seed = 0, timeout_ms = 0, budget_tokens = -1;
  double temperature = 0, top_p = 1, retention = 0, budget_fraction = 0;
  double deadline_s = 0;
};

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : "UNKNOWN";
}

int Fail(const grpc::Status& s) {
  std::fprintf(stderr, "xkv client: %s: %s\n", CodeName(s.error_code()), s.error_message().c_str());
  return 1;
}

xkv::v1::GenerateRequest BuildRequest(const ClientFlags& f) {
  xkv::v1::GenerateRequest r;
  if (f.chat) {
    if (!f.system.empty()) {
      auto* m = r.mutable_chat()->add_messages();
      m->set_role("system");
      m->set_content(f.system);
    }
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(f.prompt);
  } else {
    r.set_prompt(f.prompt);
  }
  r.set_max_tokens(static_cast<int32_t>(f.max_tokens));
  auto* s = r.mutable_sampling();
  s->set_temperature(static_cast<float>(f.temperature));
  s->set_top_p(static_cast<float>(f.top_p));
  s->set_top_k(static_cast<int32_t>(f.top_k));
  s->set_seed(static_cast<uint64_t>(f.seed));
  if (!f.stop.empty()) {
    for (absl::string_view x : absl::StrSplit(f.stop, '|', absl::SkipEmpty())) {
      s->add_stop(std::string(x));
    }
  }
  r.set_ignore_eos(f.ignore_eos);
  auto* kv = r.mutable_kv_policy();
  kv->set_policy(f.policy);
  kv->set_profile_mode(f.profile);
  if (f.retention != 0) kv->set_retention(f.retention);
  if (f.budget_tokens >= 0) kv->set_budget_tokens(f.budget_tokens);
  if (f.budget_fraction != 0) kv->set_budget_fraction(f.budget_fraction);
  if (f.per_head.has_value()) kv->set_per_head(*f.per_head);
  return r;
}

void PrintUsage(const xkv::v1::Usage& u) {
  std::fprintf(stderr,
               "\n[xkv] policy %s (%s)%s | prompt %d tokens, completion %d tokens | finish %s\n",
               u.policy().c_str(), u.profile_mode().c_str(), u.profiled() ? ", profiled" : "",
               u.prompt_tokens(), u.completion_tokens(),
               xkv::v1::FinishReason_Name(u.finish_reason()).c_str());
  const double ratio =
      u.kv_bytes_full() > 0 ? 100.0 * u.kv_bytes_held() / u.kv_bytes_full() : 100.0;
  std::fprintf(stderr, "[xkv] KV cache %lld of %lld bytes (%.1f%% of full)",
               static_cast<long long>(u.kv_bytes_held()), static_cast<long long>(u.kv_bytes_full()),
               ratio);
  if (u.has_retention()) std::fprintf(stderr, ", retention %.4f", u.retention());
  std::fprintf(stderr, "%s\n", u.reachable() ? "" : " (target unreachable: all kept)");
  std::string sizes;
  for (const auto& l : u.layers()) sizes += std::to_string(l.kept_tokens()) + " ";
  std::fprintf(stderr, "[xkv] tokens per layer: %s\n", sizes.c_str());
  const auto& t = u.timings();
  std::fprintf(stderr,
               "[xkv] queue %.1f ms, profile %.1f ms, solve %.1f ms, prefill %.1f ms, decode "
               "%.1f ms, ttft %.1f ms\n",
               t.queue_ms(), t.profile_ms(), t.solve_ms(), t.prefill_ms(), t.decode_ms(),
               t.ttft_ms());
}

int Generate(const ClientFlags& f) {
  auto channel = grpc::CreateChannel(f.server, grpc::InsecureChannelCredentials());
  auto stub = xkv::v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  if (f.deadline_s > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(f.deadline_s * 1000)));
  }
  auto reader = stub->Generate(&context, BuildRequest(f));
  xkv::v1::GenerateResponse resp;
  xkv::v1::Usage usage;
  bool have_usage = false;
  while (reader->Read(&resp)) {
    if (!f.quiet) {
      std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
      std::fflush(stdout);
    }
    if (resp.has_usage()) {
      usage = resp.usage();
      have_usage = true;
    }
  }
  grpc::Status s = reader->Finish();
  std::fputc('\n', stdout);
  if (!s.ok()) return Fail(s);
  if (have_usage) PrintUsage(usage);
  return 0;
}

template <typename Response>
int PrintJson(const grpc::Status& s, const Response& r) {
  if (!s.ok()) return Fail(s);
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(r, &json, o);
  std::fputs(json.c_str(), stdout);
  return 0;
}

int Admin(const std::string& rpc, const ClientFlags& f) {
  auto stub =
      xkv::v1::Admin::NewStub(grpc::CreateChannel(f.server, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  std::string token = f.token;
  if (token.empty()) {
    if (const char* env = std::getenv("XKV_ADMIN_TOKEN"); env != nullptr) token = env;
  }
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  if (rpc == "set-retention") {
    xkv::v1::SetRetentionTargetRequest req;
    req.set_retention(f.retention);
    xkv::v1::SetRetentionTargetResponse r;
    return PrintJson(stub->SetRetentionTarget(&ctx, req, &r), r);
  }
  if (rpc == "set-policy") {
    xkv::v1::SetPolicyRequest req;
    *req.mutable_policy() = BuildRequest(f).kv_policy();
    xkv::v1::SetPolicyResponse r;
    return PrintJson(stub->SetPolicy(&ctx, req, &r), r);
  }
  if (rpc == "config") {
    xkv::v1::GetConfigResponse r;
    return PrintJson(stub->GetConfig(&ctx, {}, &r), r);
  }
  if (rpc == "allocation") {
    xkv::v1::GetAllocationResponse r;
    return PrintJson(stub->GetAllocation(&ctx, {}, &r), r);
  }
  if (rpc == "cluster") {
    xkv::v1::GetClusterStatusResponse r;
    return PrintJson(stub->GetClusterStatus(&ctx, {}, &r), r);
  }
  if (rpc == "replan") {
    xkv::v1::ReplanRequest req;
    req.set_dry_run(f.dry_run);
    xkv::v1::ReplanResponse r;
    return PrintJson(stub->Replan(&ctx, req, &r), r);
  }
  if (rpc == "drain") {
    xkv::v1::DrainRequest req;
    req.set_resume(f.resume);
    req.set_timeout_ms(f.timeout_ms);
    xkv::v1::DrainResponse r;
    return PrintJson(stub->Drain(&ctx, req, &r), r);
  }
  std::fprintf(stderr,
               "xkv client admin: unknown rpc '%s' (set-retention, set-policy, config, "
               "allocation, cluster, replan, drain)\n",
               rpc.c_str());
  return 2;
}

}  // namespace

int RunClient(int argc, char** argv) {
  ClientFlags f;
  const std::string sub = argc > 2 ? argv[2] : "";
  FlagSet flags("client",
                "xkv client generate --server ADDR --prompt TEXT [flags]\n"
                "xkv client admin <set-retention|set-policy|config|allocation|cluster|replan|"
                "drain> --server ADDR [--token T]");
  flags.String("server", &f.server, "coordinator address (Generation, or Admin for `admin`)");
  flags.String("prompt", &f.prompt, "prompt text");
  flags.Bool("chat", &f.chat, "send the prompt as a chat user message");
  flags.String("system", &f.system, "system message for --chat");
  flags.Int("max-tokens", &f.max_tokens, "maximum tokens to generate");
  flags.Double("temperature", &f.temperature, "sampling temperature; 0 is greedy");
  flags.Double("top-p", &f.top_p, "nucleus sampling mass in (0, 1]");
  flags.Int("top-k", &f.top_k, "top-k; 0 disables");
  flags.Int("seed", &f.seed, "sampling seed");
  flags.String("stop", &f.stop, "stop strings separated by '|'");
  flags.Bool("ignore-eos", &f.ignore_eos, "keep generating past EOS");
  flags.String("policy", &f.policy, "KV policy override (full|streaming|snapkv|pyramidkv|xkv)");
  flags.String("profile", &f.profile,
               "profile mode override (per_request|one_pass|sampled:r|reconstruct)");
  flags.Double("retention", &f.retention, "retention target (generate override, set-retention)");
  flags.Int("budget-tokens", &f.budget_tokens, "KV budget in kept prefix tokens (all layers)");
  flags.Double("budget-fraction", &f.budget_fraction, "kept fraction of the prompt prefix");
  flags.String("per-head", &f.per_head_text,
               "xkv budgets per (layer, KV head): 1 or 0 (generate override, set-policy)");
  flags.Double("deadline", &f.deadline_s, "request deadline in seconds (0: none)");
  flags.Bool("quiet", &f.quiet, "do not print the generated text");
  flags.String("token", &f.token, "admin bearer token (or $XKV_ADMIN_TOKEN)");
  flags.Bool("dry-run", &f.dry_run, "replan: only compute the plan");
  flags.Bool("resume", &f.resume, "drain: admit again");
  flags.Int("timeout-ms", &f.timeout_ms, "drain: how long to wait for running requests");
  if (sub.empty() || sub == "--help" || sub == "-h") {
    std::fputs(flags.Usage().c_str(), sub.empty() ? stderr : stdout);
    return sub.empty() ? 2 : 0;
  }
  const int first = sub == "admin" ? 4 : 3;
  if (auto code = flags.ParseOrExitCode(argc, argv, std::min(first, argc))) return *code;
  if (flags.WasSet("per-head")) {
    absl::StatusOr<bool> per_head = ParsePerHead(f.per_head_text);
    if (!per_head.ok()) {
      std::fprintf(stderr, "xkv client: %s\n", std::string(per_head.status().message()).c_str());
      return 2;
    }
    f.per_head = *per_head;
  }
  if (sub == "generate") return Generate(f);
  if (sub == "admin" && argc > 3) return Admin(argv[3], f);
  std::fprintf(stderr, "xkv client: expected `generate` or `admin <rpc>`\n");
  return 2;
}

}  // namespace xkv
