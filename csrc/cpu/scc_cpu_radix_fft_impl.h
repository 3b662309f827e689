// The vector code of the operator's own FFT (scc_cpu_radix_fft.cpp includes it twice: under
// `#pragma GCC target` for AVX-512, SCC_RADIX_LANES 8, and for AVX2 + FMA, SCC_RADIX_LANES 4, in
// namespaces SCC_RADIX_NS). It therefore has no include guard and includes nothing itself.
//
// Vectors of SCC_RADIX_LANES complex values (GCC vector extensions). The leading axes are
// transformed with whole rows as the elements of the butterflies (decimation in frequency forward:
// natural order in, digit-reversed out; in time inverse), vectorised along the row with no
// shuffles; a 3D map goes plane by plane (its rows, then the height axis while the plane is in
// cache), then pencil by pencil along the depth axis; a 2D map row by row, then by columns of
// vectors. The last axis (width = lanes Mv) is a four-step transform inside each row: Mv-point
// transforms across the row's vectors, twiddles, lanes x lanes transposes and lanes-point
// transforms across registers, which leaves the row in natural order.
// Complex products take a twiddle as (re, re, ...) and (-im, im, ...): a w = a r + swap(a) s.

namespace scc_fast {
namespace SCC_RADIX_NS {
namespace {

constexpr int kLanes = SCC_RADIX_LANES;  // complex values per vector
constexpr int kFloats = 2 * kLanes;
#if SCC_RADIX_LANES == 8
typedef float V __attribute__((vector_size(64), aligned(4)));
typedef double VD __attribute__((vector_size(64), aligned(8)));
#else
// Natural (32-byte) alignment: with aligned(4), GCC copies the twiddles' registers through the
// stack in 16-byte halves and reloads them whole, a store-forwarding stall per complex product.
typedef float V __attribute__((vector_size(32)));
typedef double VD __attribute__((vector_size(32)));
#endif
typedef int32_t VI __attribute__((vector_size(4 * kFloats)));
typedef int64_t VL __attribute__((vector_size(4 * kFloats)));

inline V ld(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, V v) { std::memcpy(p, &v, sizeof v); }
#if SCC_RADIX_LANES == 8
inline V swap_ri(V a) { return __builtin_shuffle(a, VI{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}); }
const V kSign{-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1};
#else
inline V swap_ri(V a) { return __builtin_shuffle(a, VI{1, 0, 3, 2, 5, 4, 7, 6}); }
const V kSign{-1, 1, -1, 1, -1, 1, -1, 1};
#endif
struct Tw {
  V r, s;
};
inline Tw tw_vec(const float* t) { return {ld(t), ld(t + kFloats)}; }  // a row twiddle (per lane)
inline Tw tw_one(const float* t) { return {V{} + t[0], kSign * t[1]}; }  // (re, im), every lane
inline V cmul(V a, const Tw& w) { return a * w.r + swap_ri(a) * w.s; }
// a * (-i) forward, a * (+i) inverse.
inline V mul_mi(V a, bool fwd) { return swap_ri(a) * (fwd ? -kSign : kSign); }

// R-point DFT of x[0..R-1] in place (forward exp(-2 pi i qk/R), inverse exp(+...)).
template <int R>
inline void dft(V* x, bool fwd, const float* cs) {
  if constexpr (R == 2) {
    const V a = x[0], b = x[1];
    x[0] = a + b;
    x[1] = a - b;
  } else if constexpr (R == 4) {
    const V a = x[0] + x[2], b = x[0] - x[2], c = x[1] + x[3], d = mul_mi(x[1] - x[3], fwd);
    x[0] = a + c;
    x[2] = a - c;
    x[1] = b + d;
    x[3] = b - d;
  } else {
    // Odd R: pairs k, R - k. y_q = A_q -+ i B_q, y_(R-q) = A_q +- i B_q with A_q = x0 + sum_k
    // cos(2 pi qk/R) (x_k + x_(R-k)), B_q = sum_k sin(2 pi qk/R) (x_k - x_(R-k)). cs: cos then sin,
    // h x h each (row q - 1, column k - 1).
    constexpr int h = (R - 1) / 2;
    V s[h], d[h];
    V y0 = x[0];
    for (int k = 1; k <= h; ++k) {
      s[k - 1] = x[k] + x[R - k];
      d[k - 1] = x[k] - x[R - k];
      y0 += s[k - 1];
    }
    for (int q = 1; q <= h; ++q) {
      V a = x[0], b = V{};
      for (int k = 1; k <= h; ++k) {
        a += cs[(q - 1) * h + k - 1] * s[k - 1];
        b += cs[h * h + (q - 1) * h + k - 1] * d[k - 1];
      }
      const V ib = mul_mi(b, fwd);  // -i B forward, +i B inverse
      x[q] = a + ib;
      x[R - q] = a - ib;
    }
    x[0] = y0;
  }
}

// One radix-R stage over groups of m elements (element e at base + e * stride floats, nv vectors
// each). dif: R-point DFT, then twiddles; dit: conjugate structure, twiddles first.
template <int R, bool Dif>
void stage(float* base, int64_t stride, int64_t nv, int64_t n, int64_t m, const float* tw, bool fwd) {
  const float* cs = odd_constants<R>();
  const int64_t sub = m / R, f = n / m;
  for (int64_t g = 0; g < n; g += m) {
    for (int64_t j = 0; j < sub; ++j) {
      Tw w[R];
      for (int q = 1; q < R; ++q) w[q] = tw_one(tw + 2 * (q * j * f));
      float* a = base + (g + j) * stride;
      const int64_t step = sub * stride;
      for (int64_t v = 0; v < nv; ++v) {
        V x[R];
        for (int k = 0; k < R; ++k) x[k] = ld(a + k * step + kFloats * v);
        if (Dif) {
          dft<R>(x, fwd, cs);
          if (j != 0)
            for (int q = 1; q < R; ++q) x[q] = cmul(x[q], w[q]);
        } else {
          if (j != 0)
            for (int q = 1; q < R; ++q) x[q] = cmul(x[q], w[q]);
          dft<R>(x, fwd, cs);
        }
        for (int k = 0; k < R; ++k) st(a + k * step + kFloats * v, x[k]);
      }
    }
  }
}

template <bool Dif>
void run_stage(int r, float* base, int64_t stride, int64_t nv, int64_t n, int64_t m, const float* tw, bool fwd) {
  switch (r) {
    case 2: return stage<2, Dif>(base, stride, nv, n, m, tw, fwd);
    case 3: return stage<3, Dif>(base, stride, nv, n, m, tw, fwd);
    case 4: return stage<4, Dif>(base, stride, nv, n, m, tw, fwd);
    case 5: return stage<5, Dif>(base, stride, nv, n, m, tw, fwd);
    default: return stage<7, Dif>(base, stride, nv, n, m, tw, fwd);
  }
}

// Natural order in, digit-reversed out.
void dif(float* base, int64_t stride, int64_t nv, const RadixPlan::Axis& ax, bool fwd) {
  const float* tw = fwd ? ax.tw_fwd.data() : ax.tw_inv.data();
  int64_t m = ax.n;
  for (int r : ax.radices) {
    run_stage<true>(r, base, stride, nv, ax.n, m, tw, fwd);
    m /= r;
  }
}
// Digit-reversed in, natural order out.
void dit(float* base, int64_t stride, int64_t nv, const RadixPlan::Axis& ax, bool fwd) {
  const float* tw = fwd ? ax.tw_fwd.data() : ax.tw_inv.data();
  int64_t m = 1;
  for (auto it = ax.radices.rbegin(); it != ax.radices.rend(); ++it) {
    m *= *it;
    run_stage<false>(*it, base, stride, nv, ax.n, m, tw, fwd);
  }
}

// 8-point transform across 8 registers (lane by lane), natural order in and out.
inline void fft8(V* x, bool fwd) {
  const float c = static_cast<float>(std::sqrt(0.5));
  const float si = fwd ? -c : c;                                // Im W_8 (forward exp(-i pi/4))
  const Tw w1{V{} + c, kSign * si}, w3{V{} - c, kSign * si};  // W_8 and W_8^3: Im both si
  const V a0 = x[0] + x[4], b0 = x[0] - x[4];
  const V a1 = x[1] + x[5], b1 = cmul(x[1] - x[5], w1);
  const V a2 = x[2] + x[6], b2 = mul_mi(x[2] - x[6], fwd);
  const V a3 = x[3] + x[7], b3 = cmul(x[3] - x[7], w3);
  const V c0 = a0 + a2, c2 = a0 - a2, c1 = a1 + a3, c3 = mul_mi(a1 - a3, fwd);
  const V d0 = b0 + b2, d2 = b0 - b2, d1 = b1 + b3, d3 = mul_mi(b1 - b3, fwd);
  x[0] = c0 + c1;
  x[4] = c0 - c1;
  x[2] = c2 + c3;
  x[6] = c2 - c3;
  x[1] = d0 + d1;
  x[5] = d0 - d1;
  x[3] = d2 + d3;
  x[7] = d2 - d3;
}

// The lanes-point transform across lanes registers (lane by lane), natural order in and out.
inline void fft_lanes(V* x, bool fwd) {
  if constexpr (kLanes == 8)
    fft8(x, fwd);
  else
    dft<4>(x, fwd, nullptr);
}

// lanes x lanes transpose of complex (64-bit) elements.
inline void transpose(V* x) {
  VD r[kLanes], t[kLanes];
#if SCC_RADIX_LANES == 8
  for (int i = 0; i < kLanes; ++i) std::memcpy(&r[i], &x[i], sizeof r[i]);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], VL{0, 8, 2, 10, 4, 12, 6, 14});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], VL{1, 9, 3, 11, 5, 13, 7, 15});
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; ++k) {
      r[i + k] = __builtin_shuffle(t[i + k], t[i + k + 2], VL{0, 1, 8, 9, 4, 5, 12, 13});
      r[i + k + 2] = __builtin_shuffle(t[i + k], t[i + k + 2], VL{2, 3, 10, 11, 6, 7, 14, 15});
    }
  for (int k = 0; k < 4; ++k) {
    t[k] = __builtin_shuffle(r[k], r[k + 4], VL{0, 1, 2, 3, 8, 9, 10, 11});
    t[k + 4] = __builtin_shuffle(r[k], r[k + 4], VL{4, 5, 6, 7, 12, 13, 14, 15});
  }
  for (int i = 0; i < kLanes; ++i) std::memcpy(&x[i], &t[i], sizeof t[i]);
#else
  // Vector casts reinterpret the bits in registers (a memcpy here went through the stack in halves).
  for (int i = 0; i < 4; ++i) r[i] = (VD)x[i];
  for (int i = 0; i < 4; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], VL{0, 4, 2, 6});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], VL{1, 5, 3, 7});
  }
  for (int k = 0; k < 2; ++k) {
    r[k] = __builtin_shuffle(t[k], t[k + 2], VL{0, 1, 4, 5});
    r[k + 2] = __builtin_shuffle(t[k], t[k + 2], VL{2, 3, 6, 7});
  }
  for (int k = 0; k < 4; ++k) x[k] = (V)r[k];
#endif
}

// One row (width = lanes Mv complex, natural order in and out): with n = lanes n1 + n2,
// k = k1 + Mv k2, X_k = sum_n2 W_width^(n2 k1) [sum_n1 x_n W_Mv^(n1 k1)] W_lanes^(n2 k2).
void row_fft(float* row, const RadixPlan& p, bool fwd) {
  constexpr int64_t kMaxRowVectors = 2048 / kLanes;
  const int64_t mv = p.width / kLanes;
  V buf[kMaxRowVectors], tmp[kMaxRowVectors];
  for (int64_t m = 0; m < mv; ++m) buf[m] = ld(row + kFloats * m);
  V* nat = buf;  // the Mv-point transforms' outputs in natural order
  if (mv == 8) {
    fft8(buf, fwd);
  } else {
    dif(reinterpret_cast<float*>(buf), kFloats, 1, p.m, fwd);
    for (int64_t k = 0; k < mv; ++k) tmp[k] = buf[p.m.pos_of_freq[k]];
    nat = tmp;
  }
  const float* tw = fwd ? p.row_tw_fwd.data() : p.row_tw_inv.data();
  for (int64_t k1 = 1; k1 < mv; ++k1) nat[k1] = cmul(nat[k1], tw_vec(tw + 2 * kFloats * k1));
  for (int64_t a = 0; a < mv; a += kLanes) {
    const int64_t cnt = std::min<int64_t>(kLanes, mv - a);  // k1 values in this group (lanes stored)
    V x[kLanes];
    for (int64_t t = 0; t < kLanes; ++t) x[t] = t < cnt ? nat[a + t] : V{};
    transpose(x);
    fft_lanes(x, fwd);
    for (int64_t k2 = 0; k2 < kLanes; ++k2) {
      float* out = row + 2 * (mv * k2 + a);
      if (cnt == kLanes)
        st(out, x[k2]);
      else
        std::memcpy(out, &x[k2], sizeof(float) * 2 * cnt);
    }
  }
}

}  // namespace

// Items i0 .. i1 - 1 of one stage of the transform of map z (scc_cpu_radix_fft.h).
void radix_stage(float* z, const RadixPlan& p, bool fwd, int stage, int64_t i0, int64_t i1) {
  const int64_t rs = 2 * p.ls, ps = rs * p.height, nv = p.width / kLanes;
  const int64_t column_vectors = kColumnComplex / kLanes;
  for (int64_t i = i0; i < i1; ++i) {
    if (p.depth > 1 && stage == 0) {  // plane i: its rows and its height axis
      float* plane = z + i * ps;
      if (fwd) {
        for (int64_t r = 0; r < p.height; ++r) row_fft(plane + r * rs, p, true);
        dif(plane, rs, nv, p.h, true);
      } else {
        dit(plane, rs, nv, p.h, false);
        for (int64_t r = 0; r < p.height; ++r) row_fft(plane + r * rs, p, false);
      }
    } else if (p.depth > 1) {  // pencil i along the depth axis
      if (fwd)
        dif(z + i * rs, ps, nv, p.d, true);
      else
        dit(z + i * rs, ps, nv, p.d, false);
    } else if (stage == 0) {  // 2D: row i
      row_fft(z + i * rs, p, fwd);
    } else {  // 2D: columns i * column_vectors ... of vectors along the height axis
      const int64_t v0 = i * column_vectors, n_cols = std::min<int64_t>(column_vectors, nv - v0);
      if (fwd)
        dif(z + kFloats * v0, rs, n_cols, p.h, true);
      else
        dit(z + kFloats * v0, rs, n_cols, p.h, false);
    }
  }
}

}  // namespace SCC_RADIX_NS
}  // namespace scc_fast
