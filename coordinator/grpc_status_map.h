// The one status-mapping helper of the coordinator's gRPC-facing files: absl::Status <->
// grpc::Status (the canonical codes share their numbers). Core code never includes this.
#ifndef XKV_COORDINATOR_GRPC_STATUS_MAP_H_
#define XKV_COORDINATOR_GRPC_STATUS_MAP_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace xkv {

grpc::Status ToGrpc(const absl::Status& status);
// A transport failure (UNAVAILABLE, DEADLINE_EXCEEDED from the channel) keeps its code; `what`
// names the peer in the message.
absl::Status FromGrpc(const grpc::Status& status, const std::string& what = "");

}  // namespace xkv

#endif  // XKV_COORDINATOR_GRPC_STATUS_MAP_H_
