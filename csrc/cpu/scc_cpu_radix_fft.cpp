// In-place mixed-radix FFT for float32 maps with AVX-512 (see scc_cpu_radix_fft.h for why, the shapes
// and the layout).
//
// Vectors of 8 complex values (16 floats, GCC vector extensions; the code is compiled for AVX-512
// only). The leading axes are transformed with whole rows as the elements of the butterflies
// (decimation in frequency forward: natural order in, digit-reversed out; in time inverse), vectorised
// along the row with no shuffles; a 3D map goes plane by plane (its rows, then the height axis while
// the plane is in cache), then pencil by pencil along the depth axis; a 2D map row by row, then
// by columns of vectors. The last axis (width = 8 Mv) is a four-step transform inside each row:
// Mv-point transforms across the row's vectors, twiddles, 8 x 8 transposes and 8-point transforms
// across registers, which leaves the row in natural order.
// Complex products take a twiddle as (re, re, ...) and (-im, im, ...): a w = a r + swap(a) s.

#include "scc_cpu_radix_fft.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace scc_fast {
namespace {

constexpr int kTwFloats = 32;  // one row twiddle vector pair: 16 floats of re, 16 of (-im, im)
// A 2D map's height axis goes in columns this many vectors wide (512 bytes of each row): faster
// than one vector per column, per map and per step (bench/RESULTS.md, 'CPU: the operator's own
// mixed-radix FFT').
constexpr int64_t kColumnVectors = 8;
constexpr int64_t kMaxRowVectors = 256;  // width <= 2048

// Radices of n, outermost first (odd ones, then 4s, then a last 2): empty for n = 1, {0} if n has a
// prime factor above 7.
std::vector<int> radices_of(int64_t n) {
  std::vector<int> r;
  for (int p : {7, 5, 3})
    while (n % p == 0) r.push_back(p), n /= p;
  while (n % 4 == 0) r.push_back(4), n /= 4;
  if (n == 2) r.push_back(2), n = 1;
  if (n != 1) r.clear(), r.push_back(0);  // marks "does not fit"
  return r;
}
bool smooth(int64_t n) {
  if (n < 1) return false;
  const std::vector<int> r = radices_of(n);
  return r.empty() || r[0] != 0;
}

RadixPlan::Axis make_axis(int64_t n) {
  RadixPlan::Axis a;
  a.n = n;
  a.radices = radices_of(n);
  a.tw_fwd.resize(2 * n);
  a.tw_inv.resize(2 * n);
  for (int64_t e = 0; e < n; ++e) {
    const double t = -2.0 * M_PI * static_cast<double>(e) / static_cast<double>(n);
    a.tw_fwd[2 * e] = a.tw_inv[2 * e] = static_cast<float>(std::cos(t));
    a.tw_fwd[2 * e + 1] = static_cast<float>(std::sin(t));
    a.tw_inv[2 * e + 1] = static_cast<float>(-std::sin(t));
  }
  // Frequency k = q0 + r0 q1 + r0 r1 q2 + ... ends at q0 n/r0 + q1 n/(r0 r1) + ...
  a.pos_of_freq.resize(n);
  a.freq_of_pos.resize(n);
  for (int64_t k = 0; k < n; ++k) {
    int64_t rest = k, pos = 0, span = n;
    for (int r : a.radices) {
      span /= r;
      pos += (rest % r) * span;
      rest /= r;
    }
    a.pos_of_freq[k] = pos;
    a.freq_of_pos[pos] = k;
  }
  return a;
}

}  // namespace

bool radix_fft_fits(at::IntArrayRef spatial) {
  if (spatial.size() != 2 && spatial.size() != 3) return false;
  for (auto s : spatial)
    if (!smooth(s)) return false;
  const int64_t w = spatial.back();
  return w % 8 == 0 && w >= 16 && w / 8 <= kMaxRowVectors;
}

std::shared_ptr<const RadixPlan> radix_plan(at::IntArrayRef spatial, int64_t ls) {
  TORCH_CHECK(radix_fft_fits(spatial), "scc_fast native: no radix transform for maps of shape ", spatial);
  TORCH_CHECK(ls >= spatial.back(), "scc_fast native: row stride ", ls, " is shorter than a row (", spatial.back(), ")");
  static std::mutex mutex;
  static std::map<std::tuple<std::vector<int64_t>, int64_t>, std::shared_ptr<const RadixPlan>> cache;
  auto key = std::make_tuple(spatial.vec(), ls);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  auto p = std::make_shared<RadixPlan>();
  p->depth = spatial.size() == 3 ? spatial[0] : 1;
  p->height = spatial[spatial.size() - 2];
  p->width = spatial.back();
  p->ls = ls;
  p->d = make_axis(p->depth);
  p->h = make_axis(p->height);
  const int64_t mv = p->width / 8;
  p->m = make_axis(mv);
  p->row_tw_fwd.resize(kTwFloats * mv);
  p->row_tw_inv.resize(kTwFloats * mv);
  for (int64_t k1 = 0; k1 < mv; ++k1) {
    for (int n2 = 0; n2 < 8; ++n2) {
      const double t = -2.0 * M_PI * static_cast<double>(n2 * k1) / static_cast<double>(p->width);
      for (int inv = 0; inv < 2; ++inv) {
        float* w = (inv ? p->row_tw_inv.data() : p->row_tw_fwd.data()) + kTwFloats * k1;
        const double im = inv ? -std::sin(t) : std::sin(t);
        w[2 * n2] = w[2 * n2 + 1] = static_cast<float>(std::cos(t));
        w[16 + 2 * n2] = static_cast<float>(-im);
        w[16 + 2 * n2 + 1] = static_cast<float>(im);
      }
    }
  }
  // Stored row i holds frequency f = freq_of_pos[i]; -f is stored at pos_of_freq[-f mod n].
  auto mirror = [](const RadixPlan::Axis& a, int64_t i) { return a.pos_of_freq[(a.n - a.freq_of_pos[i]) % a.n]; };
  p->neg_row.resize(p->depth * p->height);
  for (int64_t i = 0; i < p->depth; ++i)
    for (int64_t j = 0; j < p->height; ++j) p->neg_row[i * p->height + j] = mirror(p->d, i) * p->height + mirror(p->h, j);
  cache.emplace(std::move(key), p);
  return p;
}

int64_t radix_stage_items(const RadixPlan& p, int stage) {
  if (p.depth > 1) return stage == 0 ? p.depth : p.height;  // planes, then pencils
  return stage == 0 ? p.height : (p.width / 8 + kColumnVectors - 1) / kColumnVectors;  // rows, then columns
}

}  // namespace scc_fast

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_RADIX_FFT 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,prefer-vector-width=512")

namespace scc_fast {
namespace {

typedef float V __attribute__((vector_size(64), aligned(4)));
typedef int32_t VI __attribute__((vector_size(64)));
typedef double VD __attribute__((vector_size(64), aligned(8)));
typedef int64_t VL __attribute__((vector_size(64)));

inline V ld(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, V v) { std::memcpy(p, &v, sizeof v); }
inline V swap_ri(V a) { return __builtin_shuffle(a, VI{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}); }
const V kSign{-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1};
struct Tw {
  V r, s;
};
inline Tw tw_vec(const float* t) { return {ld(t), ld(t + 16)}; }      // a row twiddle (per lane)
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

template <int R>
const float* odd_constants() {
  constexpr int h = R > 2 ? (R - 1) / 2 : 1;
  static const std::vector<float> cs = [] {
    std::vector<float> v(2 * h * h);
    for (int q = 1; q <= h; ++q)
      for (int k = 1; k <= h; ++k) {
        v[(q - 1) * h + k - 1] = static_cast<float>(std::cos(2.0 * M_PI * q * k / R));
        v[h * h + (q - 1) * h + k - 1] = static_cast<float>(std::sin(2.0 * M_PI * q * k / R));
      }
    return v;
  }();
  return cs.data();
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
        for (int k = 0; k < R; ++k) x[k] = ld(a + k * step + 16 * v);
        if (Dif) {
          dft<R>(x, fwd, cs);
          if (j != 0)
            for (int q = 1; q < R; ++q) x[q] = cmul(x[q], w[q]);
        } else {
          if (j != 0)
            for (int q = 1; q < R; ++q) x[q] = cmul(x[q], w[q]);
          dft<R>(x, fwd, cs);
        }
        for (int k = 0; k < R; ++k) st(a + k * step + 16 * v, x[k]);
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

// 8 x 8 transpose of complex (64-bit) elements.
inline void transpose8(V* x) {
  VD r[8], t[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&r[i], &x[i], sizeof r[i]);
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
  for (int i = 0; i < 8; ++i) std::memcpy(&x[i], &t[i], sizeof t[i]);
}

// One row (width = 8 Mv complex, natural order in and out): with n = 8 n1 + n2, k = k1 + Mv k2,
// X_k = sum_n2 W_width^(n2 k1) [sum_n1 x_n W_Mv^(n1 k1)] W_8^(n2 k2).
void row_fft(float* row, const RadixPlan& p, bool fwd) {
  const int64_t mv = p.width / 8;
  V buf[kMaxRowVectors], tmp[kMaxRowVectors];
  for (int64_t m = 0; m < mv; ++m) buf[m] = ld(row + 16 * m);
  V* nat = buf;  // the Mv-point transforms' outputs in natural order
  if (mv == 8) {
    fft8(buf, fwd);
  } else {
    dif(reinterpret_cast<float*>(buf), 16, 1, p.m, fwd);
    for (int64_t k = 0; k < mv; ++k) tmp[k] = buf[p.m.pos_of_freq[k]];
    nat = tmp;
  }
  const float* tw = fwd ? p.row_tw_fwd.data() : p.row_tw_inv.data();
  for (int64_t k1 = 1; k1 < mv; ++k1) nat[k1] = cmul(nat[k1], tw_vec(tw + kTwFloats * k1));
  for (int64_t a = 0; a < mv; a += 8) {
    const int64_t cnt = std::min<int64_t>(8, mv - a);  // k1 values in this group (lanes stored)
    V x[8];
    for (int64_t t = 0; t < 8; ++t) x[t] = t < cnt ? nat[a + t] : V{};
    transpose8(x);
    fft8(x, fwd);
    for (int64_t k2 = 0; k2 < 8; ++k2) {
      float* out = row + 2 * (mv * k2 + a);
      if (cnt == 8)
        st(out, x[k2]);
      else
        std::memcpy(out, &x[k2], sizeof(float) * 2 * cnt);
    }
  }
}

}  // namespace

void radix_stage(float* z, const RadixPlan& p, bool fwd, int stage, int64_t i0, int64_t i1) {
  const int64_t rs = 2 * p.ls, ps = rs * p.height, nv = p.width / 8;
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
    } else {  // 2D: columns i * kColumnVectors ... of vectors along the height axis
      const int64_t v0 = i * kColumnVectors, n_cols = std::min<int64_t>(kColumnVectors, nv - v0);
      if (fwd)
        dif(z + 16 * v0, rs, n_cols, p.h, true);
      else
        dit(z + 16 * v0, rs, n_cols, p.h, false);
    }
  }
}

}  // namespace scc_fast

#pragma GCC pop_options
#endif

namespace scc_fast {

// Outside the AVX-512 target region above: it runs on every CPU, to find out.
bool cpu_runs_avx512() {
#ifdef SCC_RADIX_FFT
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

#ifndef SCC_RADIX_FFT
void radix_stage(float*, const RadixPlan&, bool, int, int64_t, int64_t) {
  TORCH_CHECK(false, "scc_fast native: the radix transform is not built on this platform");
}
#endif

void radix_fft(float* z, const RadixPlan& p, bool forward) {
  for (int k = 0; k < 2; ++k) {
    const int stage = forward ? k : 1 - k;
    radix_stage(z, p, forward, stage, 0, radix_stage_items(p, stage));
  }
}

}  // namespace scc_fast

namespace {

// Test hook (tests/test_native.py): the radix transform of K maps (K x spatial, complex64) in natural
// order, as torch.fft.fftn (forward) or n * torch.fft.ifftn (inverse) gives it. The maps go through a
// workspace with padded rows (width + 2, as the operator's); `reverse_items` runs each stage's items
// last to first (the items of a stage must not depend on one another: threads split them).
at::Tensor native_radix_fft(const at::Tensor& maps, bool forward, bool reverse_items) {
  using namespace scc_fast;
  TORCH_CHECK(maps.device().is_cpu() && maps.scalar_type() == at::kComplexFloat,
              "native_radix_fft: maps must be a complex64 CPU tensor, got ", maps.scalar_type(), " on ", maps.device());
  TORCH_CHECK(maps.dim() == 3 || maps.dim() == 4, "native_radix_fft: maps must be K x spatial (2 or 3 axes), got shape ",
              maps.sizes());
  const auto spatial = maps.sizes().slice(1);
  TORCH_CHECK(radix_fft_fits(spatial), "native_radix_fft: spatial shape ", spatial,
              " does not fit the transform (prime factors 2, 3, 5, 7; the last a multiple of 8 in 16 .. 2048)");
  TORCH_CHECK(cpu_runs_avx512(), "native_radix_fft: needs GCC on x86-64 and a CPU with AVX-512");
  const int64_t W = spatial.back(), ls = W + 2, K = maps.size(0);
  const auto plan = radix_plan(spatial, ls);
  const int64_t height = plan->height, rows = plan->depth * height;
  const at::Tensor in = maps.contiguous().view({K, rows, W});
  at::Tensor work = at::zeros({K, rows, ls}, maps.options());
  // Row (d, h) of a spectrum is stored at (pos d, pos h).
  auto stored = [&](int64_t r) { return plan->d.pos_of_freq[r / height] * height + plan->h.pos_of_freq[r % height]; };
  for (int64_t r = 0; r < rows; ++r)
    work.select(1, forward ? r : stored(r)).narrow(1, 0, W).copy_(in.select(1, r));
  for (int64_t k = 0; k < K; ++k) {
    float* z = reinterpret_cast<float*>(work[k].data_ptr<c10::complex<float>>());
    for (int s = 0; s < 2; ++s) {
      const int stage = forward ? s : 1 - s;
      const int64_t n = radix_stage_items(*plan, stage);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t item = reverse_items ? n - 1 - i : i;
        radix_stage(z, *plan, forward, stage, item, item + 1);
      }
    }
  }
  at::Tensor out = at::empty({K, rows, W}, maps.options());
  for (int64_t r = 0; r < rows; ++r)
    out.select(1, r).copy_(work.select(1, forward ? stored(r) : r).narrow(1, 0, W));
  return out.view(maps.sizes());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scc_fast, m) {
  m.def("native_radix_fft(Tensor maps, bool forward, bool reverse_items=False) -> Tensor", &native_radix_fft);
}
