// ClientConnection finds a connection's socket by its addresses and sees the client go away.
#include "http/client_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace xkv {
namespace {

int PortOf(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  if (peer) {
    getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len);
  } else {
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  }
  return ntohs(a.sin_port);
}

TEST(ClientConnectionTest, SeesTheClientCloseButNotItsNextRequest) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  a.sin_port = htons(PortOf(listener, false));
  const int client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const int server = accept(listener, nullptr, nullptr);
  ASSERT_GE(server, 0);

  const ClientConnection watched(PortOf(server, false), "127.0.0.1", PortOf(server, true));
  EXPECT_FALSE(watched.Gone());
  ASSERT_EQ(write(client, "GET / HTTP/1.1\r\n", 16), 16);  // a pipelined next request
  EXPECT_FALSE(watched.Gone());
  close(client);
  EXPECT_TRUE(watched.Gone());

  // No such connection (another remote port): never "gone".
  EXPECT_FALSE(ClientConnection(PortOf(server, false), "127.0.0.1", 1).Gone());
  close(server);
  close(listener);
}

}  // namespace
}  // namespace xkv
