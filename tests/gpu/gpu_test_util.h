// Helpers shared by the GPU tests: device detection (tests skip without a device), RAII device
// buffers, random inputs and bf16 rounding identical to the device's.
#ifndef XKV_TESTS_GPU_GPU_TEST_UTIL_H_
#define XKV_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "model/cuda/cuda_llama_model.h"

namespace xkv::gpu_test {

// The real model: $XKV_MODEL, else models/ of this checkout.
inline std::string RealModelPath() {
  if (const char* env = std::getenv("XKV_MODEL"); env != nullptr && env[0] != '\0') return env;
  std::string dir = __FILE__;
  for (int i = 0; i < 3; ++i) dir = dir.substr(0, dir.find_last_of('/'));
  return dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline bool HasCudaDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define XKV_SKIP_WITHOUT_GPU() \
  if (!::xkv::gpu_test::HasCudaDevice()) GTEST_SKIP() << "no CUDA device"

#define XKV_ASSERT_OK(expr)                          \
  do {                                               \
    const ::absl::Status xkv_st_ = (expr);           \
    ASSERT_TRUE(xkv_st_.ok()) << xkv_st_.ToString(); \
  } while (0)

#define XKV_ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Device memory for n elements of T, freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0 && cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)) != cudaSuccess) {
      ptr_ = nullptr;
    }
  }
  template <typename U>
  explicit DeviceBuffer(const std::vector<U>& host) : DeviceBuffer(host.size()) {
    static_assert(sizeof(U) == sizeof(T));
    if (ptr_ != nullptr) cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  // Copies the whole buffer back (synchronous).
  template <typename U = T>
  std::vector<U> Download() const {
    static_assert(sizeof(U) == sizeof(T));
    std::vector<U> out(n_);
    if (n_ > 0) cudaMemcpy(out.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
  }
  void Fill(uint8_t byte) { cudaMemset(ptr_, byte, n_ * sizeof(T)); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Uniform in [lo, hi), never exactly 0.
inline std::vector<float> RandomVector(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    do {
      x = u(rng);
    } while (x == 0.f);
  }
  return v;
}

// Rounds every value to bf16 (round-to-nearest-even), as the device conversion does.
inline std::vector<float> RoundBf16(std::vector<float> v) {
  for (float& x : v) x = cpu::Bf16ToF32(cpu::F32ToBf16(x));
  return v;
}

inline std::vector<uint16_t> ToBf16Bits(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = cpu::F32ToBf16(v[i]);
  return out;
}

inline std::vector<float> FromBf16Bits(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = cpu::Bf16ToF32(v[i]);
  return out;
}

// |got - want| <= atol + rtol * |want| everywhere; reports the worst element.
inline ::testing::AssertionResult AllClose(const std::vector<float>& got,
                                           const std::vector<float>& want, float atol, float rtol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  size_t bad = 0, worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - want[i]);
    const double tol = atol + rtol * std::fabs(double(want[i]));
    const double excess = std::isnan(got[i]) != std::isnan(want[i]) ? 1e30 : err - tol;
    if (excess > 0 || std::isnan(err)) ++bad;
    if (excess > worst_excess) worst_excess = excess, worst = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements off (atol " << atol << ", rtol " << rtol
         << "); worst at " << worst << ": got " << got[worst] << " want " << want[worst];
}

// max |got - want| / (max(want) - min(want)): logits compared relative to the position's range.
inline double RelDiff(const float* got, const float* want, int64_t n) {
  const auto [lo, hi] = std::minmax_element(want, want + n);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
  return worst / std::max(1e-30, double(*hi) - *lo);
}

// Top-2 margin of the logits as a fraction of their range.
inline double TopTwoMargin(const std::vector<float>& logits) {
  std::vector<float> v = logits;
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  const auto [lo, hi] = std::minmax_element(logits.begin(), logits.end());
  return (v[0] - v[1]) / std::max(1e-30f, *hi - *lo);
}

// A run teacher-forced on a reference run's tokens against that run: the largest RelDiff of the
// logits over the steps, and, of the steps where the reference's top-2 margin is at least
// tie_margin ("decided"), how many give the reference's token.
struct ForcedAgreement {
  double worst = 0;
  int decided = 0, decided_equal = 0;
};
inline ForcedAgreement CompareForced(const std::vector<std::vector<float>>& got_logits,
                                     const std::vector<int32_t>& got_tokens,
                                     const std::vector<std::vector<float>>& want_logits,
                                     const std::vector<int32_t>& want_tokens, double tie_margin) {
  ForcedAgreement a;
  for (size_t t = 0; t < want_logits.size(); ++t) {
    const int64_t n = static_cast<int64_t>(want_logits[t].size());
    a.worst = std::max(a.worst, RelDiff(got_logits[t].data(), want_logits[t].data(), n));
    if (TopTwoMargin(want_logits[t]) < tie_margin) continue;
    ++a.decided;
    a.decided_equal += got_tokens[t] == want_tokens[t];
  }
  return a;
}

// A small CUDA engine for one-sequence model tests: 2 sequences, `tokens` per step and per
// sequence, a 64-block pool.
inline CudaEngineOptions SmallEngineOptions(int64_t tokens) {
  CudaEngineOptions o;
  o.max_batch = 2;
  o.max_step_tokens = tokens;
  o.max_seq_len = tokens;
  o.num_kv_blocks = 64;
  return o;
}

}  // namespace xkv::gpu_test

#endif  // XKV_TESTS_GPU_GPU_TEST_UTIL_H_
