// Whether a listen address (host:port) is reachable only from this machine.
#ifndef XKV_WORKER_LISTEN_ADDRESS_H_
#define XKV_WORKER_LISTEN_ADDRESS_H_

#include <string>

namespace xkv {

// True for localhost, 127.0.0.0/8 and [::1] (with a port); false for every other host, an empty
// host (":50061", all interfaces), 0.0.0.0, [::] and names.
bool IsLoopbackListenAddress(const std::string& address);

}  // namespace xkv

#endif  // XKV_WORKER_LISTEN_ADDRESS_H_
