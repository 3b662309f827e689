// In-place mixed-radix FFT for float32 maps, built for AVX-512 (8 complex lanes) and AVX2 + FMA (4):
// the plans, the dispatch between the builds, and the test hook. The vector code is
// scc_cpu_radix_fft_impl.h; why, the shapes and the layout: scc_cpu_radix_fft.h.

#include "scc_cpu_radix_fft.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace scc_fast {
namespace {

constexpr int64_t kMaxWidth = 2048;
// A 2D map's height axis goes in columns this many complex values wide (512 bytes of each row):
// faster than one vector per column, per map and per step (bench/RESULTS.md, 'CPU: the operator's
// own mixed-radix FFT').
constexpr int64_t kColumnComplex = 64;

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
  return w % 8 == 0 && w >= 16 && w <= kMaxWidth;
}

std::shared_ptr<const RadixPlan> radix_plan(at::IntArrayRef spatial, int64_t ls, int lanes) {
  TORCH_CHECK(radix_fft_fits(spatial), "scc_fast native: no radix transform for maps of shape ", spatial);
  TORCH_CHECK(lanes == 4 || lanes == 8, "scc_fast native: the radix transform has builds of 4 and 8 lanes, not ", lanes);
  TORCH_CHECK(ls >= spatial.back(), "scc_fast native: row stride ", ls, " is shorter than a row (", spatial.back(), ")");
  static std::mutex mutex;
  static std::map<std::tuple<std::vector<int64_t>, int64_t, int>, std::shared_ptr<const RadixPlan>> cache;
  auto key = std::make_tuple(spatial.vec(), ls, lanes);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  auto p = std::make_shared<RadixPlan>();
  p->depth = spatial.size() == 3 ? spatial[0] : 1;
  p->height = spatial[spatial.size() - 2];
  p->width = spatial.back();
  p->ls = ls;
  p->lanes = lanes;
  p->d = make_axis(p->depth);
  p->h = make_axis(p->height);
  // Row twiddles per vector k1: 2 lanes floats of re, 2 lanes of (-im, im).
  const int64_t mv = p->width / lanes, tw_floats = 4 * lanes;
  p->m = make_axis(mv);
  p->row_tw_fwd.resize(tw_floats * mv);
  p->row_tw_inv.resize(tw_floats * mv);
  for (int64_t k1 = 0; k1 < mv; ++k1) {
    for (int n2 = 0; n2 < lanes; ++n2) {
      const double t = -2.0 * M_PI * static_cast<double>(n2 * k1) / static_cast<double>(p->width);
      for (int inv = 0; inv < 2; ++inv) {
        float* w = (inv ? p->row_tw_inv.data() : p->row_tw_fwd.data()) + tw_floats * k1;
        const double im = inv ? -std::sin(t) : std::sin(t);
        w[2 * n2] = w[2 * n2 + 1] = static_cast<float>(std::cos(t));
        w[2 * lanes + 2 * n2] = static_cast<float>(-im);
        w[2 * lanes + 2 * n2 + 1] = static_cast<float>(im);
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
  const int64_t nv = p.width / p.lanes, column_vectors = kColumnComplex / p.lanes;
  return stage == 0 ? p.height : (nv + column_vectors - 1) / column_vectors;  // rows, then columns
}

}  // namespace scc_fast

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_RADIX_FFT 1
namespace scc_fast {
namespace {
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

}  // namespace
}  // namespace scc_fast

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,prefer-vector-width=512")
#define SCC_RADIX_NS avx512
#define SCC_RADIX_LANES 8
#include "scc_cpu_radix_fft_impl.h"
#undef SCC_RADIX_LANES
#undef SCC_RADIX_NS
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SCC_RADIX_NS avx2
#define SCC_RADIX_LANES 4
#include "scc_cpu_radix_fft_impl.h"
#undef SCC_RADIX_LANES
#undef SCC_RADIX_NS
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

bool cpu_runs_avx2() {
#ifdef SCC_RADIX_FFT
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

void radix_stage(float* z, const RadixPlan& p, bool forward, int stage, int64_t i0, int64_t i1) {
#ifdef SCC_RADIX_FFT
  if (p.lanes == 8) return avx512::radix_stage(z, p, forward, stage, i0, i1);
  return avx2::radix_stage(z, p, forward, stage, i0, i1);
#else
  TORCH_CHECK(false, "scc_fast native: the radix transform is not built on this platform");
#endif
}

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
  const int lanes = radix_lanes();
  TORCH_CHECK(lanes > 0, "native_radix_fft: needs GCC on x86-64 and a CPU with AVX2 + FMA, and the setting native_isa "
              "not 'baseline' (the build runs is that of native_isa: avx512 or avx2)");
  const int64_t W = spatial.back(), ls = W + 2, K = maps.size(0);
  const auto plan = radix_plan(spatial, ls, lanes);
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
