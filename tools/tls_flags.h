// --tls-cert, --tls-key, --tls-ca: the mutual-TLS files of `xkv worker` and `xkv coordinator`
// (worker/tls_credentials.h reads and checks them).
#ifndef XKV_TOOLS_TLS_FLAGS_H_
#define XKV_TOOLS_TLS_FLAGS_H_

#include <string>

#include "tools/flag_set.h"
#include "worker/tls_credentials.h"

namespace xkv {

// `whose`: whose certificate --tls-cert is, for the help text.
inline void RegisterTlsFlags(FlagSet& flags, const std::string& whose, TlsFiles* files) {
  flags.String("tls-cert", &files->cert,
               "PEM certificate of " + whose +
                   " for mutual TLS on the worker port (scripts/make-dev-ca makes a development "
                   "set); with --tls-key and --tls-ca, or none of the three: plaintext");
  flags.String("tls-key", &files->key, "PEM private key of --tls-cert");
  flags.String("tls-ca", &files->ca,
               "PEM CA bundle the peers' certificates must chain to (only such peers are "
               "served or trusted)");
}

}  // namespace xkv

#endif  // XKV_TOOLS_TLS_FLAGS_H_
