// The LSTM kernels (forward, inference, adjoint) and their XLA FFI handlers. The overview and
// the shared parts (products, threads, math, masks) are in cpu_kernels.h.

#include <cstring>

#include "cpu_kernels.h"

namespace {

using namespace rnnjax_cpu;  // NOLINT: the shared parts of cpu_kernels.h

// ---------------------------------------------------------------------------- LSTM

// One LSTM forward call; hs, cs, gates are null when not saved: then the carry is kept in
// h_last/h_spare (see HiddenAt) and c_last.
struct LstmForwardArgs {
  long T, R, H;
  const float *xw, *w, *h0, *c0, *valid, *keep;
  float *ys, *hs, *cs, *gates, *h_last, *c_last, *h_spare;
  float* HAt(long t) const { return HiddenAt(hs, h_last, h_spare, T, R * H, t); }
  float* CAt(long t) const { return cs != nullptr ? cs + t * R * H : c_last; }
};

// The forward of a part: its units' four gate columns of its rows' product at each step, and
// their gate arithmetic; then the barrier (the next product reads every unit of h).
template <bool kSave>
void LstmForwardPart(const LstmForwardArgs& a, Part p, Barrier& barrier) {
  const long R = a.R, H = a.H, G = 4 * H, j0 = p.j0, n = p.j1 - j0, ldz = 4 * n;
  Scratch wb(n < H ? H * ldz : 0), z((p.r1 - p.r0) * ldz);
  if (n < H) GatherColumns(a.w, H, 4, j0, n, wb.data());
  const float* w = n < H ? wb.data() : a.w;
  for (long t = 0; t < a.T; ++t) {
    const float *vt = a.valid + t * R, *kt = a.keep + t * R;
    const float* h_prev = t > 0 ? a.HAt(t - 1) : a.h0;
    const float* c_prev = t > 0 ? a.CAt(t - 1) : a.c0;
    float *h = a.HAt(t), *c = a.CAt(t);
    MatMul(h_prev + p.r0 * H, H, p.r1 - p.r0, H, w, ldz, ldz, z.data(), ldz);
    ZeroReset(kt + p.r0, p.r1 - p.r0, ldz, z.data());
    for (long r = p.r0; r < p.r1; ++r) {
      const long o = r * H + j0;  // the row's first unit in [R, H]
      float *y = a.ys + t * R * H + o, *hr = h + o, *cr = c + o;
      float* g = kSave ? a.gates + (t * R + r) * G + j0 : nullptr;
      if (!(vt[r] > 0.5f)) {
        Skip(n, h_prev + o, hr, y, g, 4, H);
        Skip(n, c_prev + o, cr, nullptr, nullptr, 0, H);
        continue;
      }
      const bool k = kt[r] > 0.5f;
      const float *x = a.xw + (t * R + r) * G + j0, *cp = c_prev + o;
      const float* zr = z.data() + (r - p.r0) * ldz;
#pragma omp simd
      for (long u = 0; u < n; ++u) {
        const float i = Sigmoid(x[u] + zr[u]), f = Sigmoid(x[H + u] + zr[n + u]);
        const float gg = Tanh(x[2 * H + u] + zr[2 * n + u]);
        const float og = Sigmoid(x[3 * H + u] + zr[3 * n + u]);
        const float c1 = f * (k ? cp[u] : 0.0f) + i * gg, h1 = og * Tanh(c1);
        if constexpr (kSave) g[u] = i, g[H + u] = f, g[2 * H + u] = gg, g[3 * H + u] = og;
        y[u] = h1, hr[u] = h1, cr[u] = c1;
      }
    }
    if (t + 1 < a.T) barrier.Wait();
  }
}

void LstmForwardRun(const LstmForwardArgs& a) {
  RunSplit(SplitFor(a.T, a.R, a.H, 4), [&](Part p, Barrier& barrier) {
    if (a.hs != nullptr)
      LstmForwardPart<true>(a, p, barrier);
    else
      LstmForwardPart<false>(a, p, barrier);
  });
}

ffi::Error LstmForward(F32 xw, F32 w_h, F32 h0, F32 c0, F32 valid, F32 keep, F32Out ys,
                       F32Out hs, F32Out cs, F32Out gates) {
  const long T = xw.dimensions()[0], R = xw.dimensions()[1], H = h0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 4, w_h, valid, keep); e.failure()) return e;
  LstmForwardRun({T, R, H, xw.typed_data(), w_h.typed_data(), h0.typed_data(), c0.typed_data(),
                  valid.typed_data(), keep.typed_data(), ys->typed_data(), hs->typed_data(),
                  cs->typed_data(), gates->typed_data(), nullptr, nullptr, nullptr});
  return ffi::Error::Success();
}

ffi::Error LstmInfer(F32 xw, F32 w_h, F32 h0, F32 c0, F32 valid, F32 keep, F32Out ys,
                     F32Out h_last, F32Out c_last) {
  const long T = xw.dimensions()[0], R = xw.dimensions()[1], H = h0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 4, w_h, valid, keep); e.failure()) return e;
  if (T == 0) {
    std::memcpy(h_last->typed_data(), h0.typed_data(), R * H * sizeof(float));
    std::memcpy(c_last->typed_data(), c0.typed_data(), R * H * sizeof(float));
  }
  Scratch h_spare(R * H);
  LstmForwardRun({T, R, H, xw.typed_data(), w_h.typed_data(), h0.typed_data(), c0.typed_data(),
                  valid.typed_data(), keep.typed_data(), ys->typed_data(), nullptr, nullptr,
                  nullptr, h_last->typed_data(), c_last->typed_data(), h_spare.data()});
  return ffi::Error::Success();
}

// One LSTM adjoint call; dh and dc hold the carry's cotangent (dh_last, dc_last at first).
struct LstmAdjointArgs {
  long T, R, H;
  const float *w, *gates, *cs, *c0, *valid, *keep, *dys;
  float *dz, *dh, *dc;
};

// The adjoint of a part: per step its columns of dz (elementwise), the barrier (the product
// reads whole rows of dz), its columns of dz @ w_h.T.
void LstmAdjointPart(const LstmAdjointArgs& a, Part part, Barrier& barrier) {
  const long R = a.R, H = a.H, G = 4 * H, j0 = part.j0, n = part.j1 - j0, r0 = part.r0;
  Scratch wt(G * n), p((part.r1 - r0) * n);
  TransposeRows(a.w, G, j0, n, wt.data());
  for (long t = a.T - 1; t >= 0; --t) {
    const float *vt = a.valid + t * R, *kt = a.keep + t * R;
    const float* c_before = t > 0 ? a.cs + (t - 1) * R * H : a.c0;
    float* d = a.dz + t * R * G;
    for (long r = r0; r < part.r1; ++r) {
      const long o = r * H + j0;
      float* dr = d + r * G + j0;
      if (!(vt[r] > 0.5f)) {
        for (long q = 0; q < 4; ++q) std::memset(dr + q * H, 0, n * sizeof(float));
        continue;
      }
      const bool k = kt[r] > 0.5f;
      const float *g = a.gates + (t * R + r) * G + j0, *c1 = a.cs + t * R * H + o;
      const float *cb = c_before + o, *dy = a.dys + t * R * H + o;
      float *dhr = a.dh + o, *dcr = a.dc + o;
#pragma omp simd
      for (long u = 0; u < n; ++u) {
        const float i = g[u], f = g[H + u], gg = g[2 * H + u], og = g[3 * H + u];
        const float cp = k ? cb[u] : 0.0f, dh1 = dhr[u] + dy[u], tc = Tanh(c1[u]);
        const float dc1 = dcr[u] + dh1 * og * (1.0f - tc * tc);
        dr[u] = dc1 * gg * i * (1.0f - i);
        dr[H + u] = dc1 * cp * f * (1.0f - f);
        dr[2 * H + u] = dc1 * i * (1.0f - gg * gg);
        dr[3 * H + u] = dh1 * tc * og * (1.0f - og);
        dhr[u] = 0.0f;
        dcr[u] = k ? dc1 * f : 0.0f;
      }
    }
    barrier.Wait();
    MatMul(d + r0 * G, G, part.r1 - r0, G, wt.data(), n, n, p.data(), n);
    for (long r = r0; r < part.r1; ++r) {
      if (!(kt[r] > 0.5f)) continue;
      const float* pr = p.data() + (r - r0) * n;
      float* dhr = a.dh + r * H + j0;
#pragma omp simd
      for (long u = 0; u < n; ++u) dhr[u] += pr[u];
    }
  }
}

ffi::Error LstmAdjoint(F32 w_h, F32 gates, F32 cs, F32 c0, F32 valid, F32 keep, F32 dys,
                       F32 dh_last, F32 dc_last, F32Out dz, F32Out dh0, F32Out dc0) {
  const long T = cs.dimensions()[0], R = cs.dimensions()[1], H = c0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 4, w_h, valid, keep); e.failure()) return e;
  const LstmAdjointArgs a{T, R, H, w_h.typed_data(), gates.typed_data(), cs.typed_data(),
                          c0.typed_data(), valid.typed_data(), keep.typed_data(),
                          dys.typed_data(), dz->typed_data(), dh0->typed_data(),
                          dc0->typed_data()};
  std::memcpy(a.dh, dh_last.typed_data(), R * H * sizeof(float));
  std::memcpy(a.dc, dc_last.typed_data(), R * H * sizeof(float));
  RunSplit(SplitFor(T, R, H, 4), [&](Part p, Barrier& barrier) {
    LstmAdjointPart(a, p, barrier);
  });
  return ffi::Error::Success();
}

}  // namespace

// ---------------------------------------------------------------------------- handlers

// The arguments and results in the order of the Python functions in cpu_kernels.py.
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // xw, w_h, h0, c0, valid, keep -> ys, hs, cs, gates
    RnnjaxLstmForward, LstmForward,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(  // xw, w_h, h0, c0, valid, keep -> ys, h_last, c_last
    RnnjaxLstmInfer, LstmInfer,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(  // w_h, gates, cs, c0, valid, keep, dys, dh_last, dc_last
    RnnjaxLstmAdjoint, LstmAdjoint,  // -> dz, dh0, dc0
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
