// XLA FFI kernels for XLA's CPU backend: the LSTM and GRU over a whole sequence in one call.
//
// XLA's CPU runtime runs each step of a `lax.scan` as a dozen small thunks around the
// recurrent product; here the time loop runs inside one custom call, per step one
// register-blocked product `[R, H] @ [H, G*H]` and one fused pass over the rows for all
// the gate arithmetic. The input projection `x @ w_i + b` is not part of the kernels: the
// caller computes it beforehand as one large XLA product (`xw`).
//
// The functions and their equations are those of `pallas_rnn.py` (`lstm_forward`,
// `lstm_adjoint`, `gru_forward`, `gru_adjoint`; see `cpu_kernels.py`), plus forwards that
// save nothing but the outputs and the last carry (inference). All arrays are float32 and
// row-major; masks are `[T, R]` 0/1 floats compared `> 0.5`; a step that is not valid is
// handled with selects only, so NaN inputs there never reach a valid result or the carry.
//
// Threads: when the steps are large (`SplitFor`), a call is split over a few threads
// started for it, by rows (independent sequences, no synchronization) or, if asked, by hidden
// units: then each thread computes its units' output columns of every product and their gate
// arithmetic, and the threads meet at a spinning barrier wherever a step needs whole rows of
// another thread's results. Every output element is computed by one thread in the same order
// whatever the split, so results do not depend on it. Environment, read at each call:
// `RNNJAX_CPU_THREADS` (count; 1: single-threaded; default: the cores, at most 4),
// `RNNJAX_CPU_THREADS_MIN_WORK` (multiply-adds per step from which threads are used),
// `RNNJAX_CPU_SPLIT=units` (split the units, not the rows).
// Built by setup.py as `rnnjax._src._cpu_kernels` (optional), from cpu_kernels_lstm.cc and
// cpu_kernels_gru.cc (the kernels and their handlers); this header holds what they share.

#ifndef RNNJAX_SRC_CPU_KERNELS_H_
#define RNNJAX_SRC_CPU_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace rnnjax_cpu {

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

// ---------------------------------------------------------------------------- products

inline constexpr long kCols = 64;  // the narrowest register block of output columns

// y[RB, NB] = x[RB, K] @ w[K, NB] (row strides ldx, ldw, ldy), accumulated in registers.
template <int RB, int NB>
inline void Block(const float* __restrict x, long ldx, long K, const float* __restrict w,
                  long ldw, float* __restrict y, long ldy) {
  float acc[RB][NB];
  for (int r = 0; r < RB; ++r)
#pragma omp simd
    for (int j = 0; j < NB; ++j) acc[r][j] = 0.f;
  for (long k = 0; k < K; ++k) {
    const float* wk = w + k * ldw;
    for (int r = 0; r < RB; ++r) {
      const float xv = x[r * ldx + k];
#pragma omp simd
      for (int j = 0; j < NB; ++j) acc[r][j] += xv * wk[j];
    }
  }
  for (int r = 0; r < RB; ++r)
#pragma omp simd
    for (int j = 0; j < NB; ++j) y[r * ldy + j] = acc[r][j];
}

// As Block, for the last nb < kCols columns.
template <int RB>
inline void BlockTail(const float* __restrict x, long ldx, long K, const float* __restrict w,
                      long ldw, float* __restrict y, long ldy, long nb) {
  float acc[RB][kCols];
  for (int r = 0; r < RB; ++r)
    for (long j = 0; j < nb; ++j) acc[r][j] = 0.f;
  for (long k = 0; k < K; ++k) {
    const float* wk = w + k * ldw;
    for (int r = 0; r < RB; ++r) {
      const float xv = x[r * ldx + k];
#pragma omp simd
      for (long j = 0; j < nb; ++j) acc[r][j] += xv * wk[j];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (long j = 0; j < nb; ++j) y[r * ldy + j] = acc[r][j];
}

// RB rows of the product, in column blocks as wide as the registers hold (RB * NB <= 512
// accumulators: 32 AVX-512 registers), then narrower ones (down to one vector), then the
// remainder.
template <int RB>
inline void Rows(const float* x, long ldx, long K, const float* w, long ldw, long N, float* y,
                 long ldy) {
  long n = 0;
  if constexpr (RB <= 2)
    for (; n + 256 <= N; n += 256) Block<RB, 256>(x, ldx, K, w + n, ldw, y + n, ldy);
  if constexpr (RB <= 4)
    for (; n + 128 <= N; n += 128) Block<RB, 128>(x, ldx, K, w + n, ldw, y + n, ldy);
  for (; n + kCols <= N; n += kCols) Block<RB, kCols>(x, ldx, K, w + n, ldw, y + n, ldy);
  if (n + 32 <= N) Block<RB, 32>(x, ldx, K, w + n, ldw, y + n, ldy), n += 32;
  if (n + 16 <= N) Block<RB, 16>(x, ldx, K, w + n, ldw, y + n, ldy), n += 16;
  if (n < N) BlockTail<RB>(x, ldx, K, w + n, ldw, y + n, ldy, N - n);
}

// y[R, N] = x[R, K] @ w[K, N], every matrix row-major with the given row strides.
inline void MatMul(const float* x, long ldx, long R, long K, const float* w, long ldw, long N,
            float* y, long ldy) {
  long r = 0;
  for (; r + 8 <= R; r += 8) Rows<8>(x + r * ldx, ldx, K, w, ldw, N, y + r * ldy, ldy);
  for (; r + 4 <= R; r += 4) Rows<4>(x + r * ldx, ldx, K, w, ldw, N, y + r * ldy, ldy);
  for (; r < R; ++r) Rows<1>(x + r * ldx, ldx, K, w, ldw, N, y + r * ldy, ldy);
}

// A float array aligned to 64 bytes (a cache line: vector loads that do not straddle two
// lines run twice as fast), uninitialized.
class Scratch {
 public:
  explicit Scratch(long n)
      : p_(static_cast<float*>(std::aligned_alloc(64, ((std::max(n, 1L) * 4 + 63) / 64) * 64))) {}
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* data() const { return p_; }

 private:
  float* p_;
};

// ---------------------------------------------------------------------------- threads

inline constexpr long kMinWork = 1L << 17;  // multiply-adds per step from which threads pay off,
inline constexpr long kMinSteps = 1024;     // ... times this per call (waking a core can take ms)
inline constexpr int kSpins = 2000;         // pauses at a barrier before yielding the core

inline long EnvLong(const char* name, long fallback) {
  const char* s = std::getenv(name);
  char* end = nullptr;
  const long v = s == nullptr ? 0 : std::strtol(s, &end, 10);
  return s == nullptr || end == s ? fallback : v;
}

// A thread's part of a call: rows [r0, r1) and hidden units [j0, j1).
struct Part {
  long r0, r1, j0, j1;
};

// A call's rows (independent sequences: no barrier needed) or hidden units (a barrier
// wherever a step needs whole rows) split over `count` threads, `width` each.
struct Split {
  long R, H, width;
  int count;
  bool rows;
  Part At(int k) const {
    const long n = rows ? R : H, b = std::min(k * width, n), e = std::min(b + width, n);
    return rows ? Part{b, e, 0, H} : Part{0, R, b, e};
  }
};

// Rows evenly; units in multiples of 16, so that each unit meets the same vector or scalar
// code of the elementwise loops whatever the split (bitwise equal results).
inline Split SplitOver(long R, long H, long threads, bool rows) {
  threads = std::max(1L, std::min(threads, rows ? R : (H + 15) / 16));
  const long n = rows ? R : H, even = (n + threads - 1) / threads;
  const long width = rows ? even : (even + 15) / 16 * 16;
  return Split{R, H, width, static_cast<int>((n + width - 1) / width), rows};
}

// The split of a call of T steps of `[R, H] @ [H, G*H]`: threads where the steps are large
// enough, by rows (independent sequences: no barrier). Splitting units instead (forced by
// RNNJAX_CPU_SPLIT=units) wins for few rows and a large weight on an idle machine (1.5x at
// R = 1..4, H = 256), but its barrier each step waits a whole time slice whenever another
// process takes a core from a partner thread (10x slower when measured so).
inline Split SplitFor(long T, long R, long H, long G) {
  const long work = R * G * H * H, cores = std::thread::hardware_concurrency();
  long threads = EnvLong("RNNJAX_CPU_THREADS", std::min(4L, std::max(1L, cores)));
  const long min_work = EnvLong("RNNJAX_CPU_THREADS_MIN_WORK", kMinWork);
  const char* mode = std::getenv("RNNJAX_CPU_SPLIT");
  const bool rows = mode == nullptr || std::strcmp(mode, "units") != 0;
  if (work < min_work || T * work < min_work * kMinSteps || (rows && R < 2)) threads = 1;
  return SplitOver(R, H, std::min(64L, threads), rows);
}

inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// All `count` threads wait until each has arrived (a step lasts microseconds: spin, then yield).
class Barrier {
 public:
  void Wait() {
    if (count_ == 1) return;
    const unsigned gen = gen_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < kSpins) Pause(); else std::this_thread::yield();
    }
  }
  int count_ = 1;

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> gen_{0};
};

// Runs body(part, barrier) for each part of `split`, the first on the caller; if threads
// cannot be started, the call is split over those that could.
template <class Body>
void RunSplit(Split split, Body body) {
  Barrier barrier;
  std::atomic<int> go{0};
  std::vector<std::thread> team;
  try {
    for (int k = 1; k < split.count; ++k)
      team.emplace_back([&, k] {
        int n;
        while ((n = go.load(std::memory_order_acquire)) == 0) std::this_thread::yield();
        if (k < n) body(split.At(k), barrier);
      });
  } catch (...) {
  }
  if (static_cast<int>(team.size()) + 1 < split.count)
    split = SplitOver(split.R, split.H, static_cast<long>(team.size()) + 1, split.rows);
  barrier.count_ = split.rows ? 1 : split.count;
  go.store(split.count, std::memory_order_release);
  body(split.At(0), barrier);
  for (auto& t : team) t.join();
}

// wb[H, blocks*n]: the columns of w[H, blocks*H] of units [j0, j0+n), block by block.
inline void GatherColumns(const float* w, long H, long blocks, long j0, long n, float* wb) {
  for (long k = 0; k < H; ++k)
    for (long q = 0; q < blocks; ++q)
      std::memcpy(wb + (k * blocks + q) * n, w + (k * blocks + q) * H + j0, n * sizeof(float));
}

// wt[G, n]: rows j0 .. j0+n of w[H, G], transposed.
inline void TransposeRows(const float* w, long G, long j0, long n, float* wt) {
  for (long u = 0; u < n; ++u)
    for (long q = 0; q < G; ++q) wt[q * n + u] = w[(j0 + u) * G + q];
}

// ---------------------------------------------------------------------------- functions

// exp(x) as Cephes's expf (about 1 ulp), written so that loops of it vectorize; NaN stays NaN.
inline float Exp(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  float n = x * 1.44269504088896341f;
  n = (n + 12582912.0f) - 12582912.0f;  // round to the nearest integer
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// tanh(x) as Cephes's tanhf: an odd polynomial below 0.625, else from exp(-2|x|).
inline float Tanh(float x) {
  const float a = std::fabs(x);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  const float e = Exp(-2.0f * a);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  return a < 0.625f ? small : big;
}

// After each step of a forward that saves nothing, the carry h goes alternately to h_last and
// h_spare, ending in h_last: the step's product reads the previous h while others are written.
inline float* HiddenAt(float* hs, float* h_last, float* h_spare, long T, long RH, long t) {
  return hs != nullptr ? hs + t * RH : ((T - 1 - t) % 2 == 0 ? h_last : h_spare);
}

// Zeroes the rows of z[R, ldz] where the carry is reset (the product of a zero row).
inline void ZeroReset(const float* keep, long R, long ldz, float* z) {
  for (long r = 0; r < R; ++r)
    if (!(keep[r] > 0.5f)) std::memset(z + r * ldz, 0, ldz * sizeof(float));
}

// A step that is not valid, for units [0, n) of one row: output (if any) 0, carry kept, saved
// gate blocks (if any, `blocks` of them H apart) 0.
inline void Skip(long n, const float* prev, float* carry, float* out, float* g, long blocks,
                 long H) {
  if (out != nullptr) std::memset(out, 0, n * sizeof(float));
  if (carry != prev) std::memcpy(carry, prev, n * sizeof(float));
  for (long q = 0; g != nullptr && q < blocks; ++q) std::memset(g + q * H, 0, n * sizeof(float));
}

inline ffi::Error CheckShapes(long T, long R, long H, long G, F32& w_h, F32& valid, F32& keep) {
  auto w = w_h.dimensions(), v = valid.dimensions(), k = keep.dimensions();
  if (w.size() != 2 || w[0] != H || w[1] != G * H || v.size() != 2 || v[0] != T || v[1] != R ||
      k.size() != 2 || k[0] != T || k[1] != R)
    return ffi::Error::InvalidArgument("rnnjax cpu kernel: inconsistent shapes");
  return ffi::Error::Success();
}

}  // namespace rnnjax_cpu

#endif  // RNNJAX_SRC_CPU_KERNELS_H_
