// Bit-exact emulation of llama.cpp's CPU backend (ggml-cpu) for the ops of a Llama layer, so that
// xkv's CPU engine (Numerics::kGgml) computes llama.cpp's logits bit for bit on the same GGUF.
//
// The emulated build is ggml-cpu compiled for the host (`pip install llama-cpp-python`, which
// builds llama.cpp with -march=native) on an x86-64 CPU with AVX-512F/DQ, FMA and F16C — or, when
// xkv itself is compiled without AVX-512, with AVX2, FMA and F16C (kEmulatedLanes) — as in
// llama-cpp-python 0.3.36. Every rounding step of that build is reproduced, including the order
// in which its SIMD lanes are summed (described here for AVX-512; the AVX2 build uses 8 lanes
// where it says 16, and its own expf scaling and vec_dot_f16 reduction):
//  - Activations entering a quantized product are quantized to 32-element Q8_0/Q8_1 blocks:
//    amax, d = amax / 127, q = round-half-even(x * (127 / amax)), s = fp16(d * Σq) (Q8_1).
//  - Q4_1 × Q8_1 and Q8_0 × Q8_0 dot products keep 8 fp32 lanes; lane k takes the integer sum of
//    elements 4k..4k+3 of each block, scaled by d_w * d_a with one fma per block. The lanes are
//    then summed as a tree (Sum8), and Q4_1 adds Σ fma(m_w, s_a).
//  - fp16 products (K·Q and P·V in attention): with several new tokens, llamafile's tinyBLAS keeps
//    16 lanes (lane j accumulates elements j, j + 16, ...); with one new token, ggml_vec_dot_f16
//    keeps 4 × 16 lanes over 64-element steps. 16 lanes are summed as GCC's _mm512_reduce_add_ps
//    does (Sum16).
//  - Softmax: scores × scale, the AVX-512 expf approximation (Expf) over 16-element chunks, chunk
//    sums added in double, probabilities scaled by (float)(1 / sum) and rounded to fp16.
//  - SiLU as x / (1 + Expf(-x)); RoPE from a cos/sin cache whose angle is multiplied by
//    base^(-2/dims) pair after pair. RMSNorm is cpu::LaunchRmsNorm (already ggml's arithmetic).
// On other builds (ARM, x86 without AVX2) llama.cpp sums in other orders; the results then agree
// to within fp32 rounding noise instead of exactly.
#ifndef XKV_KERNELS_CPU_GGML_EXACT_H_
#define XKV_KERNELS_CPU_GGML_EXACT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/parallel_for.h"
#include "kernels/ggml_types.h"

namespace xkv::cpu::ggml {

inline constexpr int64_t kQBlock = 32;

// The emulated ggml build, as -march=native picks llama.cpp's on the same host: AVX-512F/DQ
// (16-lane fp16 products, softmax and SiLU chunks; expf scaled with _mm512_scalef_ps) when xkv
// itself compiles for it, else AVX2/FMA/F16C (8 lanes; expf scaled through the exponent bits;
// ggml_vec_dot_f16 reduced with horizontal adds). The rest is the same code in both builds.
inline constexpr int64_t kEmulatedLanes =
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    16;
#else
    8;
#endif

// One quantized activation block: fp16 fields widened to fp32. `s` (Q8_1's fp16(d * Σq)) is
// always filled; Q8_0 products ignore it.
struct ActBlock {
  float d;
  float s;
  int8_t q[kQBlock];
};

// x: fp32 [k] with k % 32 == 0 → k / 32 blocks, as quantize_row_q8_0 / quantize_row_q8_1.
void QuantizeRow(const float* x, int64_t k, ActBlock* out);

// One Q8_K activation block (quantize_row_q8_K_ref, the K-quants' activations): d = 1 / iscale
// with iscale = -127 / (the element of largest magnitude), q = round-half-even(x * iscale), and
// bsums the sums of each 16 consecutive q.
inline constexpr int64_t kKBlock = 256;
struct Q8KBlock {
  float d;
  int8_t q[kKBlock];
  int16_t bsums[kKBlock / 16];
};

// x: fp32 [k] with k % 256 == 0 → k / 256 blocks.
void QuantizeRowQ8K(const float* x, int64_t k, Q8KBlock* out);

// A weight matrix held in its GGUF blocks (Q4_1 or Q8_0): per block the scale d (and Q4_1's
// minimum m) widened to fp32, and the quantized values packed as in the file (Q4_1: 16 bytes,
// element j in the low nibble of byte j and element j + 16 in its high nibble; Q8_0: 32 int8).
// 24 bytes per Q4_1 block, 36 per Q8_0 block: products read about as many bytes as llama.cpp's.
class QuantMatrix {
 public:
  // One block unpacked, one element per byte (Q4_1: 0..15; Q8_0: int8), m = 0 for Q8_0.
  struct Block {
    float d;
    float m;
    int8_t q[kQBlock];
  };

  QuantMatrix() = default;
  // Appends `rows` rows of `cols` elements from raw GGUF data of `type` (rows of one fused matrix
  // must share the type and width). INVALID_ARGUMENT for another type, width or a short buffer;
  // the matrix is then unchanged.
  absl::Status AppendRows(GgmlType type, const uint8_t* data, size_t size, int64_t rows,
                          int64_t cols);

  // K-quant rows (Q4_K, Q5_K, Q6_K; fused tensors may mix them) are kept as their raw
  // super-blocks, one segment per appended tensor, and multiplied with Q8_K activations the way
  // llama.cpp's CPU backend does on the emulated build (kernels/cpu/ggml_exact_kquant.cc): Q4_K
  // tensors whose row count is a multiple of 8 through the repacked 8x8 kernels (one fma chain per
  // output over the super-blocks), the rest through ggml_vec_dot_q{4,5,6}_K_q8_K's AVX2 lanes.
  // A matrix holds K-quant rows or Q4_1/Q8_0 rows, never both.
  bool is_kquant() const { return !segments_.empty(); }

  bool empty() const { return rows_ == 0; }
  GgmlType type() const { return type_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t Bytes() const;
  // Block b of row r, unpacked (for inspection; the products read the packed arrays).
  Block block(int64_t r, int64_t b) const;

  // Packed storage of row r: its blocks' scales, minimums (Q4_1) and quantized values.
  int64_t blocks_per_row() const { return cols_ / kQBlock; }
  int64_t packed_bytes() const { return type_ == GgmlType::kQ4_1 ? kQBlock / 2 : kQBlock; }
  const float* d(int64_t r) const { return d_.data() + r * blocks_per_row(); }
  const float* m(int64_t r) const { return m_.data() + r * blocks_per_row(); }
  const uint8_t* qs(int64_t r) const { return qs_.data() + r * blocks_per_row() * packed_bytes(); }

 private:
  GgmlType type_ = GgmlType::kQ8_0;
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  std::vector<float> d_, m_;  // [rows][blocks]; m_ empty for Q8_0
  std::vector<uint8_t> qs_;   // [rows][blocks][packed_bytes()]
  // K-quant rows: the raw super-blocks of each appended tensor.
  struct Segment {
    GgmlType type;
    int64_t row0 = 0, rows = 0;
    int64_t row_bytes = 0;  // cols / 256 super-blocks
    size_t offset = 0;      // into kdata_
    bool repacked = false;  // llama.cpp's repacked 8x8 kernels (Q4_K, rows % 8 == 0)
  };
  std::vector<Segment> segments_;
  std::vector<uint8_t> kdata_;

  absl::Status AppendKRows(GgmlType type, const uint8_t* data, size_t size, int64_t rows,
                           int64_t cols);
  friend absl::Status LaunchKQuantMatmul(const QuantMatrix& w, const Q8KBlock* a, int64_t m,
                                         float* c, int64_t ldc, bool accumulate, ThreadPool* pool);
};

// Whether QuantMatrix can hold weights of this type: Q4_1, Q8_0, or a K-quant of
// IsExactKQuantType.
bool IsExactQuantType(GgmlType type);
bool IsExactKQuantType(GgmlType type);  // Q4_K, Q5_K, Q6_K

// Whether this build reproduces the llama.cpp that pip builds on the same host: true when xkv is
// compiled for AVX-512F/DQ or for AVX2/FMA/F16C (-march=native does that on such hosts, for
// llama.cpp as well). Elsewhere llama.cpp sums in other orders: agreement within rounding noise.
constexpr bool kEmulatesHostBuild =
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    true;
#else
    false;
#endif

// c[i, j] (+)= dot(w row j, activation row i) for i < m, j < w.rows(), as ggml's vec_dot (and
// tinyBLAS, which sums in the same order). a: [m][w.cols() / 32] blocks. With `accumulate` the
// product is added to c (ggml_add: one rounding).
absl::Status LaunchQuantMatmul(const QuantMatrix& w, const ActBlock* a, int64_t m, float* c,
                               int64_t ldc, bool accumulate, ThreadPool* pool);

// The same for a K-quant matrix (w.is_kquant()): a [m][w.cols() / 256] Q8_K blocks.
absl::Status LaunchKQuantMatmul(const QuantMatrix& w, const Q8KBlock* a, int64_t m, float* c,
                                int64_t ldc, bool accumulate, ThreadPool* pool);

// ggml_v_expf of the emulated build (kEmulatedLanes), element by element.
float Expf(float x);
// Tree sums of 8 and 16 fp32 lanes: hsum_float_8 and GCC's _mm512_reduce_add_ps.
float Sum8(const float* lanes);
float Sum16(const float* lanes);

// RMSNorm needs no emulation: cpu::LaunchRmsNorm (kernels/cpu/rms_norm.h) already computes as
// ggml does (Σx² in double, y = (x · scale) · w); tests/unit/kernels/ggml_exact_test.cc checks it.

// RoPE "normal" style (adjacent pairs). cache: fp32 [n][dims] as (cos, sin) pairs of each row's
// position, built by RopeCache. x: [n] rows of `heads` × head_dim (row stride x_stride), rotated
// into y (row stride y_stride; y may equal x). RopeCache divides each angle by its frequency
// factor, then scales it (ggml_rope_cache_init + rope_yarn without YaRN): identical bits to the
// unscaled cache when the factors are absent and freq_scale is 1.
absl::Status RopeCache(const int64_t* positions, int64_t n, int64_t dims, float base, float* cache,
                       float freq_scale = 1.f, const float* freq_factors = nullptr);
absl::Status LaunchRope(const float* x, int64_t x_stride, int64_t n, int64_t heads,
                        int64_t head_dim, const float* cache, float* y, int64_t y_stride);

// out[r, i] = silu(gate[r, i]) * up[r, i], as ggml_vec_swiglu_f32.
absl::Status LaunchSwiGlu(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, int64_t rows, int64_t cols, float* out,
                          int64_t out_stride);

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;
};

// Causal attention of n_new queries over a cache of `len` keys, the last n_new of which belong to
// the queries themselves (query i sees keys [0, len - n_new + i]). q: [n_new][n_heads * head_dim]
// (fp16-representable values, q_stride apart); k, v: [n_kv_heads][len][head_dim] (head_stride
// apart, fp16-representable); out: [n_new][n_heads * head_dim] (out_stride apart). n_new > 1
// follows llama.cpp's batched path (tinyBLAS), n_new == 1 its one-token path (vec_dot_f16).
// head_dim must be a multiple of 16 (both builds' tinyBLAS then takes the product).
absl::Status LaunchAttention(const AttentionShape& shape, const float* q, int64_t q_stride,
                             int64_t n_new, const float* k, const float* v, int64_t head_stride,
                             int64_t len, float* out, int64_t out_stride, ThreadPool* pool);

}  // namespace xkv::cpu::ggml

#endif  // XKV_KERNELS_CPU_GGML_EXACT_H_
