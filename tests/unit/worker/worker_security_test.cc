// The worker process's own guards: which listen addresses count as loopback (plaintext needs
// one, or --insecure), the TLS files (all three or none, checked without quoting them), the
// host-memory bound of the KV pool.
#include <unistd.h>

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/host_memory.h"
#include "worker/listen_address.h"
#include "worker/tls_credentials.h"

namespace xkv {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(ListenAddressTest, OnlyLoopbackHostsAreLoopback) {
  for (const char* a :
       {"127.0.0.1:50061", "127.5.6.7:0", "localhost:1", "[::1]:50061", "ipv4:127.0.0.1:9"}) {
    EXPECT_TRUE(IsLoopbackListenAddress(a)) << a;
  }
  for (const char* a : {"0.0.0.0:50061", ":50061", "[::]:50061", "10.0.0.4:50061", "worker-0:50061",
                        "50061", "", "[::1", "128.0.0.1:1"}) {
    EXPECT_FALSE(IsLoopbackListenAddress(a)) << a;
  }
}

TEST(TlsMaterialTest, AllThreeFilesOrNone) {
  absl::StatusOr<std::optional<TlsMaterial>> none = LoadTlsMaterial({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  TlsFiles partial;
  partial.cert = "/x/tls.crt";
  EXPECT_EQ(LoadTlsMaterial(partial).status().code(), absl::StatusCode::kInvalidArgument);
  TlsFiles missing{"/no/tls.crt", "/no/tls.key", "/no/ca.crt"};
  absl::Status s = LoadTlsMaterial(missing).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("--tls-cert /no/tls.crt"));
}

TEST(TlsMaterialTest, NonPemFilesAreRefusedWithoutQuotingThem) {
  const std::string path = ::testing::TempDir() + "/xkv_not_pem." + std::to_string(getpid());
  std::ofstream(path) << "secret-looking-text";
  absl::Status s = LoadTlsMaterial({path, path, path}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("no PEM certificate"), Not(HasSubstr("secret-looking-text"))));
}

TEST(HostMemoryTest, CgroupLimitsAndPhysicalMemory) {
  EXPECT_EQ(ParseCgroupMemoryLimit("max\n"), -1);
  EXPECT_EQ(ParseCgroupMemoryLimit("8589934592\n"), 8589934592);
  EXPECT_EQ(ParseCgroupMemoryLimit("garbage"), -1);
  EXPECT_EQ(ParseCgroupMemoryLimit("0"), -1);
  const int64_t host = HostMemoryBytes();
  EXPECT_GT(host, int64_t{64} << 20);
  EXPECT_LE(host, sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE));
}

}  // namespace
}  // namespace xkv
