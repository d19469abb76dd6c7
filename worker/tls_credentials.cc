#include "worker/tls_credentials.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

constexpr std::streamsize kMaxPemBytes = 1 << 20;

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
using Bio = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE, X509_STORE_free>>;
using StoreCtxPtr =
    std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
using X509Stack = std::unique_ptr<STACK_OF(X509), OpenSslDeleter<STACK_OF(X509), FreeX509Stack>>;

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot read it"));
  std::string text;
  text.resize(kMaxPemBytes + 1);
  in.read(text.data(), kMaxPemBytes + 1);
  text.resize(in.gcount());
  if (static_cast<std::streamsize>(text.size()) > kMaxPemBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", path, ": larger than ", kMaxPemBytes, " bytes"));
  }
  return text;
}

Bio MemoryBio(const std::string& text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate of a PEM text, in order.
X509Stack ReadCertificates(const std::string& pem) {
  X509Stack certs(sk_X509_new_null());
  Bio bio = MemoryBio(pem);
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    sk_X509_push(certs.get(), c);
  }
  return certs;
}

absl::Status CheckMaterial(const TlsFiles& files, const TlsMaterial& m) {
  X509Stack chain = ReadCertificates(m.cert);
  if (sk_X509_num(chain.get()) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", files.cert, ": no PEM certificate in it"));
  }
  X509Stack cas = ReadCertificates(m.ca);
  if (sk_X509_num(cas.get()) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-ca ", files.ca, ": no PEM certificate in it"));
  }
  Bio key_bio = MemoryBio(m.key);
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", files.key, ": no unencrypted PEM private key in it"));
  }
  X509* leaf = sk_X509_value(chain.get(), 0);
  if (X509_check_private_key(leaf, key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", files.key, " does not belong to --tls-cert ", files.cert));
  }
  StorePtr store(X509_STORE_new());
  for (int i = 0; i < sk_X509_num(cas.get()); ++i) {
    X509_STORE_add_cert(store.get(), sk_X509_value(cas.get(), i));
  }
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), leaf, chain.get());
  if (X509_verify_cert(ctx.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", files.cert, " does not verify against --tls-ca ", files.ca,
                     ": ", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::optional<TlsMaterial>> LoadTlsMaterial(const TlsFiles& files) {
  const int set = !files.cert.empty() + !files.key.empty() + !files.ca.empty();
  if (set == 0) return std::nullopt;
  if (set != 3) {
    return absl::InvalidArgumentError(
        "mutual TLS needs all of --tls-cert, --tls-key and --tls-ca (or none of them)");
  }
  TlsMaterial m;
  ASSIGN_OR_RETURN(m.cert, ReadPem("tls-cert", files.cert));
  ASSIGN_OR_RETURN(m.key, ReadPem("tls-key", files.key));
  ASSIGN_OR_RETURN(m.ca, ReadPem("tls-ca", files.ca));
  RETURN_IF_ERROR(CheckMaterial(files, m));
  return m;
}

std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const TlsMaterial& tls) {
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca;
  options.pem_key_cert_pairs.push_back({tls.key, tls.cert});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(const TlsMaterial& tls) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca;
  options.pem_private_key = tls.key;
  options.pem_cert_chain = tls.cert;
  return grpc::SslCredentials(options);
}

}  // namespace xkv
