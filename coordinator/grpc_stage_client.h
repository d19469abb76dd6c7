// StageClient over gRPC to a `xkv worker` process (blocking stubs; one channel per worker).
#ifndef XKV_COORDINATOR_GRPC_STAGE_CLIENT_H_
#define XKV_COORDINATOR_GRPC_STAGE_CLIENT_H_

#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "coordinator/stage_client.h"

namespace xkv {

struct GrpcStageClientOptions {
  std::string address;                               // host:port of the worker
  absl::Duration rpc_timeout = absl::Minutes(10);    // LoadStage (reads a model)
  absl::Duration step_timeout = absl::Seconds(30);   // Step, Compact
  absl::Duration status_timeout = absl::Seconds(2);  // Status (health), Release
  // Mutual TLS to the worker (worker/tls_credentials.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

std::unique_ptr<StageClient> MakeGrpcStageClient(const GrpcStageClientOptions& options);

}  // namespace xkv

#endif  // XKV_COORDINATOR_GRPC_STAGE_CLIENT_H_
