// The public xkv.v1.Generation service: a thin callback-API adapter (one reactor per streaming
// call) over Coordinator: proto → GenerateParams → Coordinator::Submit → streamed responses; the
// last carries usage. Client cancellation and deadlines cancel the request (its blocks are freed on
// every stage).
#ifndef XKV_COORDINATOR_GENERATION_SERVICE_H_
#define XKV_COORDINATOR_GENERATION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <vector>

#include "coordinator/coordinator.h"
#include "coordinator/generate_params.h"
#include "xkv/v1/generation.grpc.pb.h"

namespace xkv {

// Proto → internal params. Unset max_tokens → 0 (Coordinator::Submit's "service default"), unset
// top_p → 1; explicit values pass through for validation.
GenerateParams ParamsFromProto(const xkv::v1::GenerateRequest& request);

// The wire-only checks ParamsFromProto cannot express: an explicit max_tokens of 0 (which the
// internal params would read as "unset") and sampling.n outside [0, kMaxChoices] are
// INVALID_ARGUMENT.
absl::Status ValidatePresence(const xkv::v1::GenerateRequest& request);

inline constexpr int kMaxChoices = 16;  // the largest SamplingOptions.n

// The n choices of a request (sampling.n; 0 = 1): ParamsFromProto with seed + i for choice i.
std::vector<GenerateParams> ChoicesFromProto(const xkv::v1::GenerateRequest& request);

// Generate is served raw (request and responses as bytes) so that the service itself parses the
// request: a malformed message or a string field that is not UTF-8 answers INVALID_ARGUMENT
// (gRPC's own deserialization would answer without a message the service could word).
class GenerationService final
    : public xkv::v1::Generation::WithRawCallbackMethod_Generate<xkv::v1::Generation::Service> {
 public:
  explicit GenerationService(Coordinator* coordinator) : coordinator_(coordinator) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;

 private:
  Coordinator* coordinator_;
};

}  // namespace xkv

#endif  // XKV_COORDINATOR_GENERATION_SERVICE_H_
