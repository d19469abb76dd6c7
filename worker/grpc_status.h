// absl::Status <-> grpc::Status (the canonical codes share their numbers). gRPC-facing files only.
#ifndef XKV_WORKER_GRPC_STATUS_H_
#define XKV_WORKER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace xkv {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace xkv

#endif  // XKV_WORKER_GRPC_STATUS_H_
