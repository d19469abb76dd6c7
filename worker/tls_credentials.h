// Mutual TLS for the internal Worker service: the coordinator and every worker present a
// certificate signed by one CA and verify the peer's against it (gRPC's own SSL credentials; the
// server requires and verifies the client's certificate). The PEM files are read as a Kubernetes
// Secret mounts them (tls.crt, tls.key, ca.crt); scripts/make-dev-ca makes a development set.
#ifndef XKV_WORKER_TLS_CREDENTIALS_H_
#define XKV_WORKER_TLS_CREDENTIALS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace xkv {

// Paths of the PEM files (the --tls-cert, --tls-key and --tls-ca flags).
struct TlsFiles {
  std::string cert;  // this process's certificate (chain)
  std::string key;   // its private key
  std::string ca;    // the CA bundle the peer's certificate must chain to
};

// The files' contents, checked: each parses, the key matches the certificate, the certificate is
// within its validity period and chains to the CA.
struct TlsMaterial {
  std::string cert, key, ca;
};

// Reads and checks the three files. std::nullopt when no path is set (plaintext);
// INVALID_ARGUMENT naming the flag when only some are set or a file is not what it should be;
// NOT_FOUND when a file cannot be read. Errors never quote a file's contents.
absl::StatusOr<std::optional<TlsMaterial>> LoadTlsMaterial(const TlsFiles& files);

// Server side: TLS that requires the client's certificate and verifies it against the CA.
std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const TlsMaterial& tls);
// Client side: verifies the server against the CA (and its name against the address) and presents
// this process's certificate.
std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(const TlsMaterial& tls);

}  // namespace xkv

#endif  // XKV_WORKER_TLS_CREDENTIALS_H_
