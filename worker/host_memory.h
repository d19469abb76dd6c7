// How much memory this process may use: the machine's physical memory, or less when a cgroup
// (a container's memory limit, e.g. a Kubernetes pod's) caps it. Bounds a stage's KV pool.
#ifndef XKV_WORKER_HOST_MEMORY_H_
#define XKV_WORKER_HOST_MEMORY_H_

#include <cstdint>
#include <string>

namespace xkv {

// min(physical memory, cgroup v2 memory.max, cgroup v1 memory.limit_in_bytes) in bytes.
int64_t HostMemoryBytes();

// The limit in a cgroup memory file's text ("max" or a byte count); -1 when it sets none.
int64_t ParseCgroupMemoryLimit(const std::string& text);

}  // namespace xkv

#endif  // XKV_WORKER_HOST_MEMORY_H_
