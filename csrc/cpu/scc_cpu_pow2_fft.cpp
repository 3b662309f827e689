// In-place power-of-two FFT for float32 maps with AVX-512 (see scc_cpu_pow2_fft.h for why and the
// layout).
//
// Vectors of 8 complex values (16 floats, GCC vector extensions; the code is compiled for AVX-512
// only). The leading axes are transformed with whole rows as the elements of radix-2 butterflies
// (decimation in frequency forward: natural order in, bit-reversed out; in time inverse), vectorised
// along the row with no shuffles; a 3D map goes plane by plane (the rows, then the height axis while
// the plane is in cache), then pencil by pencil along the depth axis. The last axis (W = 8 Mv) is a
// four-step transform inside each row: Mv-point transforms across the row's vectors, twiddles, 8 x 8
// transposes and 8-point transforms across registers, which leaves the row in natural order.
// Complex products use a twiddle held as (re, re, ...) and (-im, im, ...): a w = a r + swap(a) s.

#include "scc_cpu_pow2_fft.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace scc_fast {
namespace {

constexpr int kTwFloats = 32;  // one twiddle: 16 floats of re, 16 of (-im, im)

bool is_pow2(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

void put_twiddle(float* out, double re, double im) {
  for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(re);
  for (int i = 0; i < 8; ++i) {
    out[16 + 2 * i] = static_cast<float>(-im);
    out[16 + 2 * i + 1] = static_cast<float>(im);
  }
}

Pow2Plan::Axis make_axis(int64_t n) {
  Pow2Plan::Axis a;
  a.n = n;
  a.tw_fwd.resize(kTwFloats * (n / 2));
  a.tw_inv.resize(kTwFloats * (n / 2));
  for (int64_t j = 0; j < n / 2; ++j) {
    const double t = -2.0 * M_PI * static_cast<double>(j) / static_cast<double>(n);
    put_twiddle(&a.tw_fwd[kTwFloats * j], std::cos(t), std::sin(t));
    put_twiddle(&a.tw_inv[kTwFloats * j], std::cos(t), -std::sin(t));
  }
  int bits = 0;
  while ((int64_t(1) << bits) < n) ++bits;
  a.rev.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    int64_t r = 0;
    for (int b = 0; b < bits; ++b)
      if ((i >> b) & 1) r |= int64_t(1) << (bits - 1 - b);
    a.rev[i] = r;
  }
  return a;
}

}  // namespace

bool pow2_fft_fits(at::IntArrayRef spatial) {
  if (spatial.size() != 2 && spatial.size() != 3) return false;
  for (auto s : spatial)
    if (!is_pow2(s)) return false;
  return spatial.back() >= 64 && spatial.back() <= 2048;
}

std::shared_ptr<const Pow2Plan> pow2_plan(at::IntArrayRef spatial, int64_t ls) {
  TORCH_CHECK(pow2_fft_fits(spatial), "scc_fast native: no power-of-two transform for maps of shape ", spatial);
  TORCH_CHECK(ls >= spatial.back(), "scc_fast native: row stride ", ls, " is shorter than a row (", spatial.back(), ")");
  static std::mutex mutex;
  static std::map<std::tuple<std::vector<int64_t>, int64_t>, std::shared_ptr<const Pow2Plan>> cache;
  auto key = std::make_tuple(spatial.vec(), ls);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  auto p = std::make_shared<Pow2Plan>();
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
  cache.emplace(std::move(key), p);
  return p;
}

std::vector<int64_t> pow2_neg_row(at::IntArrayRef spatial) {
  TORCH_CHECK(pow2_fft_fits(spatial), "scc_fast native: no power-of-two transform for maps of shape ", spatial);
  const int64_t depth = spatial.size() == 3 ? spatial[0] : 1, height = spatial[spatial.size() - 2];
  const Pow2Plan::Axis d = make_axis(depth), h = make_axis(height);
  std::vector<int64_t> neg(depth * height);
  // Stored index i holds frequency rev[i]; -f is stored at rev[-f mod n] (bit reversal is its own inverse).
  for (int64_t i = 0; i < depth; ++i) {
    const int64_t ni = d.rev[(depth - d.rev[i]) % depth];
    for (int64_t j = 0; j < height; ++j) neg[i * height + j] = ni * height + h.rev[(height - h.rev[j]) % height];
  }
  return neg;
}

int64_t pow2_stage_items(const Pow2Plan& p, int stage) {
  if (p.depth > 1) return stage == 0 ? p.depth : p.height;  // planes, then pencils
  return stage == 0 ? p.height : p.width / 8;               // rows, then columns of vectors
}

}  // namespace scc_fast

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_POW2_FFT 1
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
struct Tw {
  V r, s;
};
inline Tw tw_at(const float* t) { return {ld(t), ld(t + 16)}; }
inline V cmul(V a, const Tw& w) { return a * w.r + swap_ri(a) * w.s; }
// a * (-i) forward, a * (+i) inverse: W_4.
inline V mul_w4(V a, bool fwd) {
  const V mi{1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1};
  return swap_ri(a) * (fwd ? mi : -mi);
}

// Radix-2 over n elements (element e at base + e * stride floats, nv vectors each).
// dif: natural order in, bit-reversed out; dit: bit-reversed in, natural out.
void dif(float* base, int64_t stride, int64_t nv, const Pow2Plan::Axis& ax, bool fwd) {
  const float* tw = fwd ? ax.tw_fwd.data() : ax.tw_inv.data();
  const int64_t n = ax.n;
  for (int64_t h = n / 2, ts = 1; h >= 1; h >>= 1, ts <<= 1) {
    for (int64_t g = 0; g < n; g += 2 * h) {
      for (int64_t j = 0; j < h; ++j) {
        float* a = base + (g + j) * stride;
        float* b = a + h * stride;
        if (j == 0) {
          for (int64_t v = 0; v < nv; ++v) {
            const V x = ld(a + 16 * v), y = ld(b + 16 * v);
            st(a + 16 * v, x + y);
            st(b + 16 * v, x - y);
          }
        } else {
          const Tw w = tw_at(tw + kTwFloats * j * ts);
          for (int64_t v = 0; v < nv; ++v) {
            const V x = ld(a + 16 * v), y = ld(b + 16 * v);
            st(a + 16 * v, x + y);
            st(b + 16 * v, cmul(x - y, w));
          }
        }
      }
    }
  }
}
void dit(float* base, int64_t stride, int64_t nv, const Pow2Plan::Axis& ax, bool fwd) {
  const float* tw = fwd ? ax.tw_fwd.data() : ax.tw_inv.data();
  const int64_t n = ax.n;
  for (int64_t h = 1, ts = n / 2; h < n; h <<= 1, ts >>= 1) {
    for (int64_t g = 0; g < n; g += 2 * h) {
      for (int64_t j = 0; j < h; ++j) {
        float* a = base + (g + j) * stride;
        float* b = a + h * stride;
        if (j == 0) {
          for (int64_t v = 0; v < nv; ++v) {
            const V x = ld(a + 16 * v), y = ld(b + 16 * v);
            st(a + 16 * v, x + y);
            st(b + 16 * v, x - y);
          }
        } else {
          const Tw w = tw_at(tw + kTwFloats * j * ts);
          for (int64_t v = 0; v < nv; ++v) {
            const V x = ld(a + 16 * v), y = cmul(ld(b + 16 * v), w);
            st(a + 16 * v, x + y);
            st(b + 16 * v, x - y);
          }
        }
      }
    }
  }
}

// 8-point transform across 8 registers (lane by lane), natural order in and out.
inline void fft8(V* x, bool fwd) {
  const float c = static_cast<float>(std::sqrt(0.5));
  const float si = fwd ? -c : c;  // Im W_8 (forward e^{-i pi/4})
  const V sign{-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1};
  const Tw w1{V{} + c, sign * si}, w3{V{} - c, sign * si};  // W_8 and W_8^3: Im both si
  const V a0 = x[0] + x[4], b0 = x[0] - x[4];
  const V a1 = x[1] + x[5], b1 = cmul(x[1] - x[5], w1);
  const V a2 = x[2] + x[6], b2 = mul_w4(x[2] - x[6], fwd);
  const V a3 = x[3] + x[7], b3 = cmul(x[3] - x[7], w3);
  const V c0 = a0 + a2, c2 = a0 - a2, c1 = a1 + a3, c3 = mul_w4(a1 - a3, fwd);
  const V d0 = b0 + b2, d2 = b0 - b2, d1 = b1 + b3, d3 = mul_w4(b1 - b3, fwd);
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

// One row (W = 8 Mv complex, natural order in and out): with n = 8 n1 + n2, k = k1 + Mv k2,
// X_k = sum_n2 W_W^(n2 k1) [sum_n1 x_n W_Mv^(n1 k1)] W_8^(n2 k2).
void row_fft(float* row, const Pow2Plan& p, bool fwd) {
  const int64_t mv = p.width / 8;
  V buf[256], tmp[256];  // width <= 2048 (pow2_fft_fits)
  for (int64_t m = 0; m < mv; ++m) buf[m] = ld(row + 16 * m);
  if (mv == 8) {
    fft8(buf, fwd);
  } else {
    dif(reinterpret_cast<float*>(buf), 16, 1, p.m, fwd);
    for (int64_t k = 0; k < mv; ++k) tmp[p.m.rev[k]] = buf[k];
    for (int64_t k = 0; k < mv; ++k) buf[k] = tmp[k];
  }
  const float* tw = fwd ? p.row_tw_fwd.data() : p.row_tw_inv.data();
  for (int64_t k1 = 1; k1 < mv; ++k1) buf[k1] = cmul(buf[k1], tw_at(tw + kTwFloats * k1));
  for (int64_t a = 0; a < mv; a += 8) {
    transpose8(buf + a);
    fft8(buf + a, fwd);
    for (int64_t k2 = 0; k2 < 8; ++k2) st(row + 2 * (mv * k2 + a), buf[a + k2]);
  }
}

}  // namespace

bool pow2_fft_compiled_and_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("fma");
  return ok;
}

void pow2_stage(float* z, const Pow2Plan& p, bool fwd, int stage, int64_t i0, int64_t i1) {
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
    } else {  // 2D: column of vectors i along the height axis
      if (fwd)
        dif(z + 16 * i, rs, 1, p.h, true);
      else
        dit(z + 16 * i, rs, 1, p.h, false);
    }
  }
}

}  // namespace scc_fast

#pragma GCC pop_options
#endif

namespace scc_fast {

#ifndef SCC_POW2_FFT
bool pow2_fft_compiled_and_supported() { return false; }
void pow2_stage(float*, const Pow2Plan&, bool, int, int64_t, int64_t) {
  TORCH_CHECK(false, "scc_fast native: the power-of-two transform is not built on this platform");
}
#endif

void pow2_fft(float* z, const Pow2Plan& p, bool forward) {
  for (int k = 0; k < 2; ++k) {
    const int stage = forward ? k : 1 - k;
    pow2_stage(z, p, forward, stage, 0, pow2_stage_items(p, stage));
  }
}

}  // namespace scc_fast

namespace {

// Test hook (tests/test_native.py): the power-of-two transform of K maps (K x spatial, complex64) in
// natural order, as torch.fft.fftn (forward) or n * torch.fft.ifftn (inverse) gives it. The maps go
// through a workspace with padded rows (W + 2, as the operator's); `reverse_items` runs each stage's
// items last to first (the items of a stage must not depend on one another: threads split them).
at::Tensor native_pow2_fft(const at::Tensor& maps, bool forward, bool reverse_items) {
  using namespace scc_fast;
  TORCH_CHECK(maps.device().is_cpu() && maps.scalar_type() == at::kComplexFloat,
              "native_pow2_fft: maps must be a complex64 CPU tensor, got ", maps.scalar_type(), " on ", maps.device());
  TORCH_CHECK(maps.dim() == 3 || maps.dim() == 4, "native_pow2_fft: maps must be K x spatial (2 or 3 axes), got shape ",
              maps.sizes());
  const auto spatial = maps.sizes().slice(1);
  TORCH_CHECK(pow2_fft_fits(spatial), "native_pow2_fft: spatial shape ", spatial,
              " does not fit the transform (powers of two, the last 64 .. 2048)");
  TORCH_CHECK(pow2_fft_compiled_and_supported(), "native_pow2_fft: needs GCC on x86-64 and a CPU with AVX-512");
  const int64_t W = spatial.back(), ls = W + 2, K = maps.size(0);
  const auto plan = pow2_plan(spatial, ls);
  const int64_t depth = plan->depth, height = plan->height, rows = depth * height;
  const at::Tensor in = maps.contiguous().view({K, rows, W});
  at::Tensor work = at::zeros({K, rows, ls}, maps.options());
  // Row (d, h) of a spectrum is stored at (rev d, rev h).
  auto stored = [&](int64_t r) { return plan->d.rev[r / height] * height + plan->h.rev[r % height]; };
  for (int64_t r = 0; r < rows; ++r)
    work.select(1, forward ? r : stored(r)).narrow(1, 0, W).copy_(in.select(1, r));
  for (int64_t k = 0; k < K; ++k) {
    float* z = reinterpret_cast<float*>(work[k].data_ptr<c10::complex<float>>());
    for (int s = 0; s < 2; ++s) {
      const int stage = forward ? s : 1 - s;
      const int64_t n = pow2_stage_items(*plan, stage);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t item = reverse_items ? n - 1 - i : i;
        pow2_stage(z, *plan, forward, stage, item, item + 1);
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
  m.def("native_pow2_fft(Tensor maps, bool forward, bool reverse_items=False) -> Tensor", &native_pow2_fft);
}
