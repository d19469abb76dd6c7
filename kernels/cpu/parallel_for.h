// A small persistent thread pool with a blocking ParallelFor, for CPU kernels that split work
// over independent items (attention heads, rows). GEMMs use OpenBLAS's own threads instead.
#ifndef XKV_KERNELS_CPU_PARALLEL_FOR_H_
#define XKV_KERNELS_CPU_PARALLEL_FOR_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace xkv::cpu {

class ThreadPool {
 public:
  // `num_threads` >= 1 counts the calling thread: a pool of 1 runs everything inline.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(i) for every i in [0, n), spread over the pool's threads and the caller; returns when
  // all calls are done. Items are handed out dynamically (an atomic counter), so uneven items
  // balance. Not re-entrant: fn must not call ParallelFor on the same pool. Calls from different
  // threads are serialised.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunItems();

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises ParallelFor callers
  std::mutex mu_;
  // Mirrors of generation_ and busy_ that threads may read without mu_, to spin briefly before
  // sleeping (see parallel_for.cc).
  std::atomic<int64_t> generation_seen_{0};
  std::atomic<int> busy_seen_{0};
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  // Set under mu_ before a call's generation is published; read by the call's participants.
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};  // next item to hand out
  int64_t generation_ = 0;        // bumped per ParallelFor call
  int busy_ = 0;                  // workers still inside the current call
  bool stop_ = false;
};

// Runs fn(i) for i in [0, n) on `pool` when given, else inline.
inline void ParallelFor(ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& fn) {
  if (pool == nullptr || pool->num_threads() <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool->ParallelFor(n, fn);
}

}  // namespace xkv::cpu

#endif  // XKV_KERNELS_CPU_PARALLEL_FOR_H_
