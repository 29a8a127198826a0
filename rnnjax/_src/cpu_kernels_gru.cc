// The GRU kernels (forward, inference, adjoint) and their XLA FFI handlers. The overview and
// the shared parts (products, threads, math, masks) are in cpu_kernels.h.

#include <cstring>

#include "cpu_kernels.h"

namespace {

using namespace rnnjax_cpu;  // NOLINT: the shared parts of cpu_kernels.h

// ---------------------------------------------------------------------------- GRU

// One GRU forward call; hs, gates, hn are null when not saved (the carry: see HiddenAt).
// rh[R, H] holds r * hp for the candidate's product without reset_after.
struct GruForwardArgs {
  long T, R, H;
  const float *xw, *w, *b, *h0, *valid, *keep;
  float *ys, *hs, *gates, *hn, *h_last, *h_spare, *rh;
  bool reset_after;
  float* HAt(long t) const { return HiddenAt(hs, h_last, h_spare, T, R * H, t); }
};

// The forward of a part: its units' three gate columns of its rows' products at each step,
// and their gate arithmetic. Without reset_after, a barrier between r * hp and its product.
template <bool kSave>
void GruForwardPart(const GruForwardArgs& a, Part p, Barrier& barrier) {
  const long R = a.R, H = a.H, G = 3 * H, j0 = p.j0, n = p.j1 - j0, ldz = 3 * n;
  const long r0 = p.r0, m = p.r1 - p.r0;
  const bool after = a.reset_after;
  Scratch wb(n < H ? H * ldz : 0), z(m * ldz);
  if (n < H) GatherColumns(a.w, H, 3, j0, n, wb.data());
  const float* w = n < H ? wb.data() : a.w;
  for (long t = 0; t < a.T; ++t) {
    const float *vt = a.valid + t * R, *kt = a.keep + t * R, *xt = a.xw + t * R * G + j0;
    const float* h_prev = t > 0 ? a.HAt(t - 1) : a.h0;
    float* h = a.HAt(t);
    // reset_after: all three blocks now; else r and z now, the candidate's after the reset.
    MatMul(h_prev + r0 * H, H, m, H, w, ldz, after ? ldz : 2 * n, z.data(), ldz);
    ZeroReset(kt + r0, m, ldz, z.data());
    if (!after) {
      for (long r = r0; r < p.r1; ++r) {
        const float *x = xt + r * G, *zr = z.data() + (r - r0) * ldz, *hp = h_prev + r * H + j0;
        const bool k = kt[r] > 0.5f;
        float* rhr = a.rh + r * H + j0;
#pragma omp simd
        for (long u = 0; u < n; ++u) rhr[u] = Sigmoid(x[u] + zr[u]) * (k ? hp[u] : 0.0f);
      }
      barrier.Wait();
      MatMul(a.rh + r0 * H, H, m, H, w + 2 * n, ldz, n, z.data() + 2 * n, ldz);
    }
    for (long r = r0; r < p.r1; ++r) {
      const long o = r * H + j0;
      float *y = a.ys + t * R * H + o, *hr = h + o;
      float* g = kSave ? a.gates + (t * R + r) * G + j0 : nullptr;
      float* q = kSave ? a.hn + t * R * H + o : nullptr;
      if (!(vt[r] > 0.5f)) {
        Skip(n, h_prev + o, hr, y, g, 3, H);
        if (kSave) std::memset(q, 0, n * sizeof(float));
        continue;
      }
      const bool k = kt[r] > 0.5f;
      const float *x = xt + r * G, *zr = z.data() + (r - r0) * ldz, *hp = h_prev + o;
      const float* b = a.b + j0;
#pragma omp simd
      for (long u = 0; u < n; ++u) {
        const float rg = Sigmoid(x[u] + zr[u]), zg = Sigmoid(x[H + u] + zr[n + u]);
        const float hh = zr[2 * n + u] + b[u];
        const float c = Tanh(x[2 * H + u] + (after ? rg * hh : hh));
        const float h1 = (1.0f - zg) * c + zg * (k ? hp[u] : 0.0f);
        if constexpr (kSave) g[u] = rg, g[H + u] = zg, g[2 * H + u] = c, q[u] = hh;
        y[u] = h1, hr[u] = h1;
      }
    }
    if (t + 1 < a.T) barrier.Wait();
  }
}

void GruForwardRun(const GruForwardArgs& a) {
  Scratch rh(a.reset_after ? 0 : a.R * a.H);
  GruForwardArgs b = a;
  b.rh = rh.data();
  RunSplit(SplitFor(a.T, a.R, a.H, 3), [&](Part p, Barrier& barrier) {
    if (b.hs != nullptr)
      GruForwardPart<true>(b, p, barrier);
    else
      GruForwardPart<false>(b, p, barrier);
  });
}

ffi::Error GruForward(F32 xw, F32 w_h, F32 b_hn, F32 h0, F32 valid, F32 keep, F32Out ys,
                      F32Out hs, F32Out gates, F32Out hn, bool reset_after) {
  const long T = xw.dimensions()[0], R = xw.dimensions()[1], H = h0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 3, w_h, valid, keep); e.failure()) return e;
  GruForwardRun({T, R, H, xw.typed_data(), w_h.typed_data(), b_hn.typed_data(), h0.typed_data(),
                 valid.typed_data(), keep.typed_data(), ys->typed_data(), hs->typed_data(),
                 gates->typed_data(), hn->typed_data(), nullptr, nullptr, nullptr, reset_after});
  return ffi::Error::Success();
}

ffi::Error GruInfer(F32 xw, F32 w_h, F32 b_hn, F32 h0, F32 valid, F32 keep, F32Out ys,
                    F32Out h_last, bool reset_after) {
  const long T = xw.dimensions()[0], R = xw.dimensions()[1], H = h0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 3, w_h, valid, keep); e.failure()) return e;
  if (T == 0) std::memcpy(h_last->typed_data(), h0.typed_data(), R * H * sizeof(float));
  Scratch h_spare(R * H);
  GruForwardRun({T, R, H, xw.typed_data(), w_h.typed_data(), b_hn.typed_data(), h0.typed_data(),
                 valid.typed_data(), keep.typed_data(), ys->typed_data(), nullptr, nullptr,
                 nullptr, h_last->typed_data(), h_spare.data(), nullptr, reset_after});
  return ffi::Error::Success();
}

// One GRU adjoint call; dh holds the carry's cotangent (dh_last at first).
struct GruAdjointArgs {
  long T, R, H;
  const float *w, *gates, *hn, *hs, *h0, *valid, *keep, *dys;
  float *da, *dhh, *dh;
  bool reset_after;
};

// The elementwise part of adjoint step t for a part, in its valid rows (others: zeros).
// Leaves l[rows, units] = dh1*z (+ drh*r later), zeroes the valid rows' dh; with reset_after,
// da and dhh are complete; without it, their r-block waits for drh = dnp @ w_hn.T.
void GruAdjointRows(const GruAdjointArgs& a, long t, Part p, const float* h_before, float* l) {
  const long R = a.R, H = a.H, G = 3 * H, j0 = p.j0, n = p.j1 - j0;
  const float *vt = a.valid + t * R, *kt = a.keep + t * R;
  for (long r = p.r0; r < p.r1; ++r) {
    const long o = r * H + j0;
    float *da = a.da + (t * R + r) * G + j0, *dhh = a.dhh + (t * R + r) * G + j0;
    float* lr = l + (r - p.r0) * n;
    if (!(vt[r] > 0.5f)) {
      for (long q = 0; q < 3; ++q) std::memset(da + q * H, 0, n * sizeof(float));
      for (long q = 0; q < 3; ++q) std::memset(dhh + q * H, 0, n * sizeof(float));
      std::memset(lr, 0, n * sizeof(float));
      continue;
    }
    const bool k = kt[r] > 0.5f, after = a.reset_after;
    const float *g = a.gates + (t * R + r) * G + j0, *hb = h_before + o;
    const float *dy = a.dys + t * R * H + o, *hn = a.hn + t * R * H + o;
    float* dhr = a.dh + o;
#pragma omp simd
    for (long u = 0; u < n; ++u) {
      const float rg = g[u], zg = g[H + u], c = g[2 * H + u], hp = k ? hb[u] : 0.0f;
      const float dh1 = dhr[u] + dy[u];
      const float dnp = dh1 * (1.0f - zg) * (1.0f - c * c);
      const float dpz = dh1 * (hp - c) * zg * (1.0f - zg);
      const float dpr = after ? dnp * hn[u] * rg * (1.0f - rg) : 0.0f;
      da[u] = dpr, da[H + u] = dpz, da[2 * H + u] = dnp;
      dhh[u] = dpr, dhh[H + u] = dpz, dhh[2 * H + u] = after ? dnp * rg : dnp;
      lr[u] = dh1 * zg;
      dhr[u] = 0.0f;
    }
  }
}

// Without reset_after: the r-block of da and dhh and the rest of l, from drh[rows, units].
void GruAdjointReset(const GruAdjointArgs& a, long t, Part p, const float* h_before,
                     const float* drh, float* l) {
  const long R = a.R, H = a.H, G = 3 * H, j0 = p.j0, n = p.j1 - j0;
  const float *vt = a.valid + t * R, *kt = a.keep + t * R;
  for (long r = p.r0; r < p.r1; ++r) {
    if (!(vt[r] > 0.5f)) continue;
    const bool k = kt[r] > 0.5f;
    const float *g = a.gates + (t * R + r) * G + j0, *hb = h_before + r * H + j0;
    const float* d = drh + (r - p.r0) * n;
    float *da = a.da + (t * R + r) * G + j0, *dhh = a.dhh + (t * R + r) * G + j0;
    float* lr = l + (r - p.r0) * n;
#pragma omp simd
    for (long u = 0; u < n; ++u) {
      const float rg = g[u], hp = k ? hb[u] : 0.0f;
      const float dpr = d[u] * hp * rg * (1.0f - rg);
      da[u] = dpr, dhh[u] = dpr;
      lr[u] += d[u] * rg;
    }
  }
}

// The adjoint of a part: per step its columns of da and dhh (elementwise; without
// reset_after, a barrier and drh's product in between), the barrier, its columns of
// dhh @ w_h.T.
void GruAdjointPart(const GruAdjointArgs& a, Part part, Barrier& barrier) {
  const long R = a.R, H = a.H, G = 3 * H, j0 = part.j0, n = part.j1 - j0;
  const long r0 = part.r0, m = part.r1 - r0;
  Scratch wt(G * n), l(m * n), drh(m * n), p(m * n);
  TransposeRows(a.w, G, j0, n, wt.data());
  for (long t = a.T - 1; t >= 0; --t) {
    const float* kt = a.keep + t * R;
    const float* h_before = t > 0 ? a.hs + (t - 1) * R * H : a.h0;
    const float *da = a.da + (t * R + r0) * G, *dhh = a.dhh + (t * R + r0) * G;
    GruAdjointRows(a, t, part, h_before, l.data());
    if (!a.reset_after) {
      barrier.Wait();
      MatMul(da + 2 * H, G, m, H, wt.data() + 2 * H * n, n, n, drh.data(), n);
      GruAdjointReset(a, t, part, h_before, drh.data(), l.data());
    }
    barrier.Wait();
    MatMul(dhh, G, m, a.reset_after ? G : 2 * H, wt.data(), n, n, p.data(), n);
    for (long r = r0; r < part.r1; ++r) {
      if (!(kt[r] > 0.5f)) continue;
      const float *pr = p.data() + (r - r0) * n, *lr = l.data() + (r - r0) * n;
      float* dhr = a.dh + r * H + j0;
#pragma omp simd
      for (long u = 0; u < n; ++u) dhr[u] += lr[u] + pr[u];
    }
  }
}

ffi::Error GruAdjoint(F32 w_h, F32 gates, F32 hn, F32 hs, F32 h0, F32 valid, F32 keep, F32 dys,
                      F32 dh_last, F32Out da, F32Out dhh, F32Out dh0, bool reset_after) {
  const long T = hs.dimensions()[0], R = hs.dimensions()[1], H = h0.dimensions()[1];
  if (auto e = CheckShapes(T, R, H, 3, w_h, valid, keep); e.failure()) return e;
  const GruAdjointArgs a{T, R, H, w_h.typed_data(), gates.typed_data(), hn.typed_data(),
                         hs.typed_data(), h0.typed_data(), valid.typed_data(), keep.typed_data(),
                         dys.typed_data(), da->typed_data(), dhh->typed_data(), dh0->typed_data(),
                         reset_after};
  std::memcpy(a.dh, dh_last.typed_data(), R * H * sizeof(float));
  RunSplit(SplitFor(T, R, H, 3), [&](Part p, Barrier& barrier) {
    GruAdjointPart(a, p, barrier);
  });
  return ffi::Error::Success();
}

}  // namespace

// ---------------------------------------------------------------------------- handlers

// The arguments and results in the order of the Python functions in cpu_kernels.py.
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // xw, w_h, b_hn, h0, valid, keep -> ys, hs, gates, hn
    RnnjaxGruForward, GruForward,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Attr<bool>("reset_after"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(  // xw, w_h, b_hn, h0, valid, keep -> ys, h_last
    RnnjaxGruInfer, GruInfer,
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Attr<bool>("reset_after"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(  // w_h, gates, hn, hs, h0, valid, keep, dys, dh_last
    RnnjaxGruAdjoint, GruAdjoint,  // -> da, dhh, dh0
    ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
        .Attr<bool>("reset_after"));
