#include "kernels/cpu/parallel_for.h"

#include <algorithm>
#include <chrono>

namespace xkv::cpu {
namespace {

// Consecutive ParallelFor calls (one per kernel of a decode step) come microseconds apart, and a
// futex sleep and wake-up costs about as much as a small kernel's work. Workers and the caller
// therefore poll for up to this long before sleeping on their condition variable.
constexpr auto kSpin = std::chrono::microseconds(100);

// Polls `done` until it returns true or kSpin has passed; returns its last value.
template <typename Done>
bool SpinUntil(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    if (i % 64 == 63 && std::chrono::steady_clock::now() > until) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunItems() {
  // Workers get here after seeing the call's generation under mu_, so fn_ and n_ are the call's.
  const std::function<void(int64_t)>* fn = fn_;
  const int64_t n = n_;
  for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n;
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    (*fn)(i);
  }
}

void ThreadPool::WorkerLoop() {
  int64_t seen = 0;
  for (;;) {
    SpinUntil([&] { return generation_seen_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    RunItems();
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_seen_.store(--busy_, std::memory_order_release);
      if (busy_ == 0) done_cv_.notify_all();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  std::lock_guard<std::mutex> call_lock(call_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    busy_ = static_cast<int>(workers_.size());
    busy_seen_.store(busy_, std::memory_order_relaxed);
    generation_seen_.store(++generation_, std::memory_order_release);
  }
  work_cv_.notify_all();
  RunItems();
  SpinUntil([&] { return busy_seen_.load(std::memory_order_acquire) == 0; });
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return busy_ == 0; });
  fn_ = nullptr;
}

}  // namespace xkv::cpu
