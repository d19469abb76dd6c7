// Whether the client of a request that a handler is still working on has gone away. cpp-httplib
// 0.11 (Debian's) tells a handler nothing about its connection until it writes: a non-streamed
// response is written only at the end, so a handler that waits for a generation polls this to
// cancel the work of a client that closed its connection (newer httplib: is_connection_closed).
#ifndef XKV_HTTP_CLIENT_CONNECTION_H_
#define XKV_HTTP_CLIENT_CONNECTION_H_

#include <string>

namespace xkv {

class ClientConnection {
 public:
  // The connection with these addresses (the httplib::Request's local_port, remote_addr and
  // remote_port), found among this process's sockets; Gone() is false when none matches.
  ClientConnection(int local_port, const std::string& remote_addr, int remote_port);

  // True once the client closed (or reset) its side: the socket reads end-of-file or an error.
  // Pipelined bytes of a next request do not count. Non-blocking.
  bool Gone() const;

 private:
  int fd_ = -1;  // the connection's socket, owned by httplib (open until the handler returns)
};

}  // namespace xkv

#endif  // XKV_HTTP_CLIENT_CONNECTION_H_
