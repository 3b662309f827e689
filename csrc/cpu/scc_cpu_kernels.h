// Inner loops of the CPU kernel (csrc/cpu/scc_cpu.cpp), on raw pointers so they vectorise.
//
// This file is included three times by scc_cpu.cpp, with SCC_KERNEL_NS set to a namespace name: once
// for the baseline instruction set and (GCC, x86-64) under `#pragma GCC target` for AVX2 + FMA and for
// AVX-512, chosen at run time. It therefore has no include guard and must not include headers itself:
// everything it uses (int64_t, std::sqrt, std::exp, std::numeric_limits, std::vector, std::memcpy) is
// included by scc_cpu.cpp before the first inclusion.
//
// Complex maps are interleaved (re, im) arrays of T. Spectra are in fftn layout, `rows` rows of
// length L (the last spatial axis) starting `ls` complex elements apart (ls >= L: the workspace pads
// its rows, see scc_cpu.cpp); row r's mirror row (leading coordinates negated) is neg_row[r].
// Real maps (p, targets, gradients) are packed, rows L apart.

#ifndef SCC_KERNEL_NS
#error "define SCC_KERNEL_NS before including scc_cpu_kernels.h"
#endif

namespace scc_fast {
namespace SCC_KERNEL_NS {

// Target value at voxel i of the class with label `cl`: labels compare, float targets are read.
template <typename T>
inline T target_value(const int64_t* m, int64_t cl, int64_t i) {
  return m[i] == cl ? T(1) : T(0);
}
template <typename T>
inline T target_value(const int32_t* m, int64_t cl, int64_t i) {
  return m[i] == static_cast<int32_t>(cl) ? T(1) : T(0);
}
template <typename T>
inline T target_value(const T* m, int64_t, int64_t i) {
  return m[i];
}

// exp for the activations, written so that loops over it vectorise (libm's expf does not without
// -ffast-math; GCC needs branch-free selects, rounding by the 1.5 * 2^23 trick and a union bit cast).
// float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial (truncation
// below 1e-8 relative, under one float ulp) and 2^n built in the exponent bits; 0 below -87.3
// (where expf goes subnormal: a probability that small is 0 to the loss), +Inf above 88.7.
// double keeps std::exp: the float64 path is the accuracy reference, not the fast one.
inline float act_exp(float x) {
  const float lo = x < -87.3f ? -87.3f : x;
  const float xc = lo > 88.7f ? 88.7f : lo;
  const float t = xc * 1.44269504088896341f;
  const float nf = (t + 12582912.0f) - 12582912.0f;  // round to nearest, |t| < 2^22
  const float r = (xc - nf * 0.693359375f) + nf * 2.12194440e-4f;  // ln2 split as hi - lo
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(nf) + 127) << 23;
  const float e = x < -87.3f ? 0.0f : q * scale.f;
  return x > 88.7f ? std::numeric_limits<float>::infinity() : e;
}
inline double act_exp(double x) { return std::exp(x); }

// p[i] for voxels [i0, i1) of one channel: x the channel's input, shift/scale the image's per-voxel
// statistics (softmax: max over channels and keep / sum of exp; other activations: keep, the ignore
// mask, or no statistics at all when scale is null).
template <typename T>
void activate_range(const T* x, const T* shift, const T* scale, int64_t act, T* out, int64_t i0, int64_t i1) {
  if (act == kActSoftmax) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = act_exp(x[i] - shift[i]) * scale[i];
  } else if (act == kActSigmoid) {
    if (scale != nullptr) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] = scale[i] / (T(1) + act_exp(-x[i]));
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] = T(1) / (T(1) + act_exp(-x[i]));
    }
  } else if (scale != nullptr) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = x[i] * scale[i];
  } else {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = x[i];
  }
}

// Per-voxel statistics of one image over voxels [i0, i1). Softmax: shift = max_c x_c and scale =
// keep / sum_c exp(x_c - shift); other activations: scale = keep (shift unused). keep = 0 where the
// voxel's label equals ign (lab == nullptr: no voxel is ignored). With e (softmax only), the terms
// exp(x_c - shift) of the channels c >= first_channel are also stored, map c - first_channel of e
// (maps e_stride apart).
// Returns false when softmax read a NaN or +-Inf among the inputs (x * 0 is 0 for finite x, NaN
// otherwise: one multiply-add per element in a loop bound by memory), true otherwise.
template <typename T, typename Y>
bool stats_range(const T* x, int64_t n_chan, int64_t n_vox, bool softmax, const Y* lab, int64_t ign, T* shift,
                 T* scale, int64_t i0, int64_t i1, T* e = nullptr, int64_t first_channel = 0, int64_t e_stride = 0) {
  bool finite = true;
  if (softmax) {
    T check = 0;
#pragma omp simd reduction(+ : check)
    for (int64_t i = i0; i < i1; ++i) {
      shift[i] = x[i];
      check += x[i] * T(0);
    }
    for (int64_t c = 1; c < n_chan; ++c) {
      const T* xc = x + c * n_vox;
#pragma omp simd reduction(+ : check)
      for (int64_t i = i0; i < i1; ++i) {
        shift[i] = xc[i] > shift[i] ? xc[i] : shift[i];
        check += xc[i] * T(0);
      }
    }
    finite = check == T(0);
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) scale[i] = T(0);
    for (int64_t c = 0; c < n_chan; ++c) {
      const T* xc = x + c * n_vox;
      if (e == nullptr || c < first_channel) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) scale[i] += act_exp(xc[i] - shift[i]);
        continue;
      }
      T* ec = e + (c - first_channel) * e_stride;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T v = act_exp(xc[i] - shift[i]);
        ec[i] = v;
        scale[i] += v;
      }
    }
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) scale[i] = T(1) / scale[i];
  } else {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) scale[i] = T(1);
  }
  if (lab != nullptr) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) scale[i] = static_cast<int64_t>(lab[i]) == ign ? T(0) : scale[i];
  }
  return finite;
}

// The activation of one image over voxels [i0, i1), written as p (the n_chan - first_channel maps in
// the loss) next to the statistics the backward needs (shift/scale as stats_range; null when the
// activation needs none). Each exp is taken once: softmax stores exp(x_c - max) in p, then scales it.
// p matches activate_range with the same statistics bit for bit (the backward recomputes it so).
// p's maps are p_stride apart (n_vox for the gradient buffer; a block's length for a scratch block).
// Returns stats_range's finiteness test (softmax; true for the other activations).
template <typename T, typename Y>
bool activation_pass_range(const T* x, int64_t n_chan, int64_t first_channel, int64_t n_vox, int64_t act,
                           const Y* lab, int64_t ign, T* shift, T* scale, T* p, int64_t i0, int64_t i1,
                           int64_t p_stride) {
  if (act == kActSoftmax) {
    const bool finite =
        stats_range<T, Y>(x, n_chan, n_vox, true, lab, ign, shift, scale, i0, i1, p, first_channel, p_stride);
    for (int64_t c = first_channel; c < n_chan; ++c) {
      T* pc = p + (c - first_channel) * p_stride;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) pc[i] *= scale[i];
    }
    return finite;
  }
  if (scale != nullptr) stats_range<T, Y>(x, n_chan, n_vox, false, lab, ign, shift, scale, i0, i1);
  for (int64_t c = first_channel; c < n_chan; ++c)
    activate_range<T>(x + c * n_vox, shift, scale, act, p + (c - first_channel) * p_stride, i0, i1);
  return true;
}

// dLoss/dx of one image over voxels [i0, i1) (backward of the fused activation). g_c = up[c] *
// field_c for the channels in the loss (c >= first_channel), 0 for a dropped background channel.
//   softmax: p_c (g_c - sum_k p_k g_k);  sigmoid: g_c keep s (1 - s);  none: g_c keep.
// out (n_chan maps) holds p between the two softmax loops, so the block's p is computed once.
template <typename T>
void activation_backward_range(const T* x, const T* field, const double* up, const T* shift, const T* scale,
                               int64_t act, int64_t n_chan, int64_t first_channel, int64_t n_vox, T* out, T* acc,
                               int64_t i0, int64_t i1) {
  const int64_t n = i1 - i0;
  if (act == kActSoftmax) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) acc[i] = T(0);
    for (int64_t c = 0; c < n_chan; ++c) {
      const T* xc = x + c * n_vox;
      T* oc = out + c * n_vox;
      if (c < first_channel) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) oc[i] = act_exp(xc[i] - shift[i]) * scale[i];
        continue;
      }
      const T u = static_cast<T>(up[c - first_channel]);
      const T* fc = field + (c - first_channel) * n_vox;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T p = act_exp(xc[i] - shift[i]) * scale[i];
        oc[i] = p;
        acc[i - i0] += p * (u * fc[i]);
      }
    }
    for (int64_t c = 0; c < n_chan; ++c) {
      T* oc = out + c * n_vox;
      if (c < first_channel) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) oc[i] = -oc[i] * acc[i - i0];
        continue;
      }
      const T u = static_cast<T>(up[c - first_channel]);
      const T* fc = field + (c - first_channel) * n_vox;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) oc[i] = oc[i] * (u * fc[i] - acc[i - i0]);
    }
    return;
  }
  for (int64_t c = 0; c < n_chan; ++c) {
    T* oc = out + c * n_vox;
    if (c < first_channel) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) oc[i] = T(0);
      continue;
    }
    const T u = static_cast<T>(up[c - first_channel]);
    const T* fc = field + (c - first_channel) * n_vox;
    const T* xc = x + c * n_vox;
    if (act == kActSigmoid) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T s = T(1) / (T(1) + act_exp(-xc[i]));
        oc[i] = u * fc[i] * (scale != nullptr ? scale[i] : T(1)) * s * (T(1) - s);
      }
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) oc[i] = u * fc[i] * (scale != nullptr ? scale[i] : T(1));
    }
  }
}

// z[i] = p[i] + i*y[i] over voxels [i0, i1) (one row), and the sums of (p - kp), (p - kp)^2,
// (y - ky), (y - ky)^2, (p - kp)(y - ky), added in double to acc[0..4]. Within the row the sums
// run in T (short sums of shifted values; float lanes vectorise twice as wide as double).
template <typename T, typename Y>
void build_range(const T* p, const Y* ym, int64_t cl, double kp, double ky, T* z, int64_t i0, int64_t i1, double* acc) {
  const T kpt = static_cast<T>(kp), kyt = static_cast<T>(ky);
  T s1 = 0, s2 = 0, t1 = 0, t2 = 0, spy = 0;
#pragma omp simd reduction(+ : s1, s2, t1, t2, spy)
  for (int64_t i = i0; i < i1; ++i) {
    const T pv = p[i];
    const T yv = target_value<T>(ym, cl, i);
    z[2 * i] = pv;
    z[2 * i + 1] = yv;
    const T dp = pv - kpt;
    const T dy = yv - kyt;
    s1 += dp;
    s2 += dp * dp;
    t1 += dy;
    t2 += dy * dy;
    spy += dp * dy;
  }
  acc[0] += s1;
  acc[1] += s2;
  acc[2] += t1;
  acc[3] += t2;
  acc[4] += spy;
}

// |P_k| and |Y_k| from Z_k = P_k + i Y_k and Z_-k: P = (Z_k + conj Z_-k)/2, Y = (Z_k - conj Z_-k)/(2i).
template <typename T>
inline void split_bin(T zr, T zi, T mr, T mi, T& pr, T& pi, T& a, T& b) {
  pr = (zr + mr) * T(0.5);
  pi = (zi - mi) * T(0.5);
  const T yr = (zi + mi) * T(0.5);
  const T yi = (mr - zr) * T(0.5);
  a = std::sqrt(pr * pr + pi * pi);
  b = std::sqrt(yr * yr + yi * yi);
}

// Longest last axis whose mirror row sums_rows reverses into a stack buffer (longer rows take a
// scalar loop).
constexpr int64_t kMaxRevRow = 4096;

// T_a, T_b, T_ab over the half spectrum of rows [r0, r1) (columns 0 .. L/2, each column other than 0
// and Nyquist counted twice for its mirror), DC left out unless include_dc; added to acc[0..2].
template <typename T>
void sums_rows(const T* Z, const int64_t* neg_row, int64_t L, int64_t ls, int64_t r0, int64_t r1, bool include_dc,
               double* acc) {
  // Columns [1, j_end) have their mirror L - j outside the half and count twice. For even L the loop
  // also runs over the Nyquist column L/2 (its mirror is itself; counted once, so taken back once
  // below): L/2 iterations fill whole vectors where L has factors of two.
  const int64_t j_end = L % 2 == 0 ? L / 2 + 1 : (L + 1) / 2;
  double ta = 0, tb = 0, tab = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* zr = Z + 2 * r * ls;
    const T* zn = Z + 2 * neg_row[r] * ls;
    T pr, pi, a, b;
    if (r != 0 || include_dc) {
      split_bin(zr[0], zr[1], zn[0], zn[1], pr, pi, a, b);
      ta += a;
      tb += b;
      tab += static_cast<double>(a) * b;
    }
    if (L % 2 == 0) {
      const int64_t h = L / 2;
      split_bin(zr[2 * h], zr[2 * h + 1], zn[2 * h], zn[2 * h + 1], pr, pi, a, b);
      ta -= a;
      tb -= b;
      tab -= static_cast<double>(a) * b;
    }
    // The mirror columns L - j, reversed into a local row so that the loop below reads both rows
    // forwards (GCC does not vectorise the reversed interleaved reads of a reduction loop).
    T rev[2 * kMaxRevRow];  // (re, im) of columns up to L/2: indices up to L + 1 <= kMaxRevRow + 1
    const T* zm = zn;
    if (L <= kMaxRevRow) {
      for (int64_t j = 1; j < j_end; ++j) {
        rev[2 * j] = zn[2 * (L - j)];
        rev[2 * j + 1] = zn[2 * (L - j) + 1];
      }
      zm = rev;
    }
    // Row sums in T (vectorised), the row totals in double.
    T ra = 0, rb = 0, rab = 0;
    if (L <= kMaxRevRow) {
#pragma omp simd reduction(+ : ra, rb, rab)
      for (int64_t j = 1; j < j_end; ++j) {
        // split_bin written out: helpers with reference outputs keep GCC from vectorising.
        const T xr = zr[2 * j], xi = zr[2 * j + 1], mr = zm[2 * j], mi = zm[2 * j + 1];
        const T pr = xr + mr, pi = xi - mi, yr = xi + mi, yi = mr - xr;  // 2 P and 2 i Y
        const T qa = T(0.5) * std::sqrt(pr * pr + pi * pi);
        const T qb = T(0.5) * std::sqrt(yr * yr + yi * yi);
        ra += qa;
        rb += qb;
        rab += qa * qb;
      }
    } else {
      for (int64_t j = 1; j < j_end; ++j) {
        const T xr = zr[2 * j], xi = zr[2 * j + 1], mr = zn[2 * (L - j)], mi = zn[2 * (L - j) + 1];
        const T pr = xr + mr, pi = xi - mi, yr = xi + mi, yi = mr - xr;
        const T qa = T(0.5) * std::sqrt(pr * pr + pi * pi);
        const T qb = T(0.5) * std::sqrt(yr * yr + yi * yi);
        ra += qa;
        rb += qb;
        rab += qa * qb;
      }
    }
    ta += 2 * static_cast<double>(ra);
    tb += 2 * static_cast<double>(rb);
    tab += 2 * static_cast<double>(rab);
  }
  acc[0] += ta;
  acc[1] += tb;
  acc[2] += tab;
}

// G_k = (c_a + c_ab |Y_k|) P_k / |P_k| (0 where |P_k| = 0) + s_p P_k + s_y Y_k of one pair at bin
// (zr, zi; mirror mr, mi). The last two are the spatial terms c_p (p - [DC out] mean p) +
// c_y (y - [DC out] mean y) of the gradient moved into the spectrum (s = c / N: DFT^H of P / N is p, and without DC, p less its mean),
// so that the inverse transform gives the whole field and no pass reads p or y again.
template <typename T>
inline void field_bin(T zr, T zi, T mr, T mi, T ca, T cab, T sp, T sy, T& gr, T& gi) {
  T pr, pi, a, b;
  split_bin(zr, zi, mr, mi, pr, pi, a, b);
  const T yr = (zi + mi) * T(0.5), yi = (mr - zr) * T(0.5);
  // Divide by a safe value, then select: no branch, so the loop vectorises.
  const bool nz = a > T(0);
  const T f = nz ? (ca + cab * b) / (nz ? a : T(1)) : T(0);
  gr = (f + sp) * pr + sy * yr;
  gi = (f + sp) * pi + sy * yi;
}

// W = G1 + i G2 over rows [r0, r1) of the full spectrum (pairs 1 and 2 share one Hermitian-pair
// spectrum: both G are Hermitian, so Re/Im of the inverse transform are their two gradients).
// Row r writes its columns 1 .. ceil(L/2) - 1 and their mirrors L - j in row neg_row[r], and, where
// r <= neg_row[r], columns 0 and Nyquist of both rows. Each element of W is written from the
// elements of Z1 and Z2 at its own and its mirror position only, after reading them, and no other
// row's work reads those: W may be Z1 (in place), with rows split over threads.
// Pass Z2 = Z1 and ca2 = cab2 = sp2 = sy2 = 0 when there is no second pair.
template <typename T>
void field_rows(
    const T* Z1,
    const T* Z2,
    T ca1,
    T cab1,
    T sp1,
    T sy1,
    T ca2,
    T cab2,
    T sp2,
    T sy2,
    T* W,
    const int64_t* neg_row,
    int64_t L,
    int64_t ls,
    int64_t r0,
    int64_t r1,
    bool include_dc) {
  const int64_t j_end = (L + 1) / 2;
  // The loop below has 2 P and 2 Y: the spatial terms' factors halved.
  const T hp1 = sp1 * T(0.5), hy1 = sy1 * T(0.5), hp2 = sp2 * T(0.5), hy2 = sy2 * T(0.5);
  // For even L the loop also computes the Nyquist column (L/2 iterations fill whole vectors where L
  // has factors of two; L/2 - 1 left a scalar tail), into a row buffer: the Nyquist values of a row
  // whose mirror row comes first may read inputs that row has already overwritten, so they are not
  // stored, and the first row of the two stores them.
  const bool buffered = L % 2 == 0;
  const int64_t j_loop = buffered ? L / 2 + 1 : j_end;
  std::vector<T> buf(buffered ? 4 * j_loop : 0);
  T* br = buf.data();            // W_k of columns j = 1 .. L/2 at 2 j
  T* bn = buf.data() + 2 * j_loop;  // W_-k of the same columns at 2 j
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t rn = neg_row[r];
    const T* a1 = Z1 + 2 * r * ls;
    const T* m1 = Z1 + 2 * rn * ls;
    const T* a2 = Z2 + 2 * r * ls;
    const T* m2 = Z2 + 2 * rn * ls;
    T* wr = W + 2 * r * ls;
    T* wn = W + 2 * rn * ls;
    // Column 0 is its own mirror's column (Nyquist too): the row of the two (r, rn) that comes
    // first writes both, reading every input before writing (W may be Z1 itself).
    if (rn >= r) {
      T g1r, g1i, g2r, g2i;
      field_bin(a1[0], a1[1], m1[0], m1[1], ca1, cab1, sp1, sy1, g1r, g1i);
      field_bin(a2[0], a2[1], m2[0], m2[1], ca2, cab2, sp2, sy2, g2r, g2i);
      if (r == 0 && !include_dc) g1r = g1i = g2r = g2i = T(0);  // the DC bin
      wr[0] = g1r - g2i;
      wr[1] = g1i + g2r;
      wn[0] = g1r + g2i;  // W_-k = conj(G1_k) + i conj(G2_k); the same values where rn == r
      wn[1] = g2r - g1i;
    }
    T* outr = buffered ? br : wr;
    T* outn = buffered ? bn : wn;
    const int64_t n_off = buffered ? 0 : L;  // outn's index of column j: 2 j (buffer) or 2 (L - j)
    const int64_t n_sign = buffered ? 1 : -1;
#pragma omp simd
    for (int64_t j = 1; j < j_loop; ++j) {
      const int64_t jm = L - j;
      // field_bin for both pairs, written out (see sums_rows). With P = (Z_k + conj Z_-k)/2 and
      // B = |Y|, G = (c_a + c_ab B) P / |P|; the factors 1/2 cancel in P/|P|.
      const T x1r = a1[2 * j], x1i = a1[2 * j + 1], n1r = m1[2 * jm], n1i = m1[2 * jm + 1];
      const T p1r = x1r + n1r, p1i = x1i - n1i, y1r = x1i + n1i, y1i = n1r - x1r;
      const T a1m = std::sqrt(p1r * p1r + p1i * p1i);
      const T b1m = T(0.5) * std::sqrt(y1r * y1r + y1i * y1i);
      const T f1 = a1m > T(0) ? (ca1 + cab1 * b1m) / (a1m > T(0) ? a1m : T(1)) : T(0);
      const T h1r = (f1 + hp1) * p1r + hy1 * y1r, h1i = (f1 + hp1) * p1i + hy1 * y1i;
      const T x2r = a2[2 * j], x2i = a2[2 * j + 1], n2r = m2[2 * jm], n2i = m2[2 * jm + 1];
      const T p2r = x2r + n2r, p2i = x2i - n2i, y2r = x2i + n2i, y2i = n2r - x2r;
      const T a2m = std::sqrt(p2r * p2r + p2i * p2i);
      const T b2m = T(0.5) * std::sqrt(y2r * y2r + y2i * y2i);
      const T f2 = a2m > T(0) ? (ca2 + cab2 * b2m) / (a2m > T(0) ? a2m : T(1)) : T(0);
      const T h2r = (f2 + hp2) * p2r + hy2 * y2r, h2i = (f2 + hp2) * p2i + hy2 * y2i;
      // W_k = G1_k + i G2_k;  W_-k = conj(G1_k) + i conj(G2_k).
      const int64_t jn = n_off + n_sign * j;
      outr[2 * j] = h1r - h2i;
      outr[2 * j + 1] = h1i + h2r;
      outn[2 * jn] = h1r + h2i;
      outn[2 * jn + 1] = h2r - h1i;
    }
    if (!buffered) continue;
    const int64_t h = L / 2;
    std::memcpy(wr + 2, br + 2, sizeof(T) * 2 * (h - 1));
#pragma omp simd
    for (int64_t j = 1; j < h; ++j) {
      wn[2 * (L - j)] = bn[2 * j];
      wn[2 * (L - j) + 1] = bn[2 * j + 1];
    }
    if (rn >= r) {  // Nyquist: W_-k last, as for column 0 (equal where rn == r)
      wr[2 * h] = br[2 * h];
      wr[2 * h + 1] = br[2 * h + 1];
      wn[2 * h] = bn[2 * h];
      wn[2 * h + 1] = bn[2 * h + 1];
    }
  }
}

// Spectrum of the class whose maps are one minus the others' (softmax over every channel, labels
// in range): out = -(sum of the n_others spectra) over interleaved values [v0, v1); the caller adds
// N (1 + i) at DC. The others are added in the order given (deterministic).
template <typename T>
void complement_range(const T* const* others, int64_t n_others, T* out, int64_t v0, int64_t v1) {
  const T* first = others[0];
#pragma omp simd
  for (int64_t v = v0; v < v1; ++v) out[v] = first[v];
  for (int64_t o = 1; o < n_others; ++o) {
    const T* z = others[o];
#pragma omp simd
    for (int64_t v = v0; v < v1; ++v) out[v] += z[v];
  }
#pragma omp simd
  for (int64_t v = v0; v < v1; ++v) out[v] = -out[v];
}

// complement_range over rows [r0, r1) of spectra whose rows are ls apart (the padding is skipped).
template <typename T>
void complement_rows(const T* const* others, int64_t n_others, T* out, int64_t L, int64_t ls, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) complement_range<T>(others, n_others, out, 2 * r * ls, 2 * r * ls + 2 * L);
}

// The gradient fields of rows [r0, r1): part 0 (Re) or 1 (Im) of the inverse-transformed packed
// spectrum w (rows ls apart) into the packed map out.
template <typename T>
void unpack_rows(const T* w, int part, T* out, int64_t L, int64_t ls, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* wr = w + 2 * r * ls + part;
    T* o = out + r * L;
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) o[j] = wr[2 * j];
  }
}

}  // namespace SCC_KERNEL_NS
}  // namespace scc_fast

namespace scc_fast {
namespace SCC_KERNEL_NS {
// The entry points scc_cpu.cpp calls, as one type to pass as a template argument.
struct Kernels {
  template <typename T, typename Y>
  static void build(const T* p, const Y* ym, int64_t cl, double kp, double ky, T* z, int64_t i0, int64_t i1, double* acc) {
    build_range<T, Y>(p, ym, cl, kp, ky, z, i0, i1, acc);
  }
  template <typename T>
  static void sums(const T* Z, const int64_t* neg_row, int64_t L, int64_t ls, int64_t r0, int64_t r1, bool include_dc,
                   double* acc) {
    sums_rows<T>(Z, neg_row, L, ls, r0, r1, include_dc, acc);
  }
  template <typename T>
  static void field(const T* Z1, const T* Z2, T ca1, T cab1, T sp1, T sy1, T ca2, T cab2, T sp2, T sy2, T* W,
                    const int64_t* neg_row, int64_t L, int64_t ls, int64_t r0, int64_t r1, bool include_dc) {
    field_rows<T>(Z1, Z2, ca1, cab1, sp1, sy1, ca2, cab2, sp2, sy2, W, neg_row, L, ls, r0, r1, include_dc);
  }
  template <typename T>
  static void activate(const T* x, const T* shift, const T* scale, int64_t act, T* out, int64_t i0, int64_t i1) {
    activate_range<T>(x, shift, scale, act, out, i0, i1);
  }
  template <typename T, typename Y>
  static bool stats(const T* x, int64_t n_chan, int64_t n_vox, bool softmax, const Y* lab, int64_t ign, T* shift,
                    T* scale, int64_t i0, int64_t i1) {
    return stats_range<T, Y>(x, n_chan, n_vox, softmax, lab, ign, shift, scale, i0, i1);
  }
  template <typename T, typename Y>
  static bool activation_pass(const T* x, int64_t n_chan, int64_t first_channel, int64_t n_vox, int64_t act,
                              const Y* lab, int64_t ign, T* shift, T* scale, T* p, int64_t i0, int64_t i1,
                              int64_t p_stride) {
    return activation_pass_range<T, Y>(x, n_chan, first_channel, n_vox, act, lab, ign, shift, scale, p, i0, i1,
                                       p_stride);
  }
  template <typename T>
  static void activation_backward(const T* x, const T* field, const double* up, const T* shift, const T* scale,
                                  int64_t act, int64_t n_chan, int64_t first_channel, int64_t n_vox, T* out, T* acc,
                                  int64_t i0, int64_t i1) {
    activation_backward_range<T>(x, field, up, shift, scale, act, n_chan, first_channel, n_vox, out, acc, i0, i1);
  }
  template <typename T>
  static void complement(const T* const* others, int64_t n_others, T* out, int64_t L, int64_t ls, int64_t r0,
                         int64_t r1) {
    complement_rows<T>(others, n_others, out, L, ls, r0, r1);
  }
  template <typename T>
  static void unpack(const T* w, int part, T* out, int64_t L, int64_t ls, int64_t r0, int64_t r1) {
    unpack_rows<T>(w, part, out, L, ls, r0, r1);
  }
};
}  // namespace SCC_KERNEL_NS
}  // namespace scc_fast
