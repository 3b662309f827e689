// CPU kernel of scc_fast::scc_forward: SPEC section 2 with fused passes around ATen's FFT.
//
// Pairs (image b, class c) are processed in chunks of consecutive pairs (about 2 MB of complex maps
// each), so the workspace is a few MB whatever the batch, and the transforms run on cache-sized
// batches (measured: 224x224 maps transform about 2x faster per map in batches of 4 than of 72).
// Per chunk:
//   1. build pass:   z = p + i*y for each pair (labels read directly, y built on the fly) and the
//                    spatial sums of p and y (shifted by the first voxel; row sums in the map dtype,
//                    totals in double);
//   2. Z = fftn(z):  one complex transform for the two real maps of a pair;
//   3. sums pass:    over the half spectrum, P_k = (Z_k + conj Z_-k)/2, Y_k = (Z_k - conj Z_-k)/(2i),
//                    T_a = sum_K |P|, T_b = sum_K |Y|, T_ab = sum_K |P||Y| (weighted half spectrum);
//   4. scalars:      SCC and the gradient coefficients, the formulas and zero tests of
//                    scc_fast.backends.torch_fft.pair_coefficients / scc_fast._numerics, in double;
//   5. field pass:   W = G_1 + i*G_2 with G = (c_a + c_ab |Y|) P/|P| for two pairs at once (both
//                    Hermitian, so one complex inverse transform gives both real gradients);
//   6. w = ifftn(W) (unnormalised), then the final pass: grad_1 = Re w + c_p (p - [DC out] mean p)
//                    + c_y (y - [DC out] mean y), grad_2 from Im w.
// Threads: every pass is parallel over (pair, block of rows); in each transform the threads split the
// maps, each transforming its share in one single-threaded call.
// Partial sums are added in a fixed order: the per-pair sums do not depend on the thread split.
// The inner loops (scc_cpu_kernels.h) are compiled twice, baseline and AVX2+FMA, chosen at run time.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

// The inner loops, compiled twice: portable, and with AVX2 + FMA where GCC targets x86-64.
#define SCC_KERNEL_NS baseline
#include "scc_cpu_kernels.h"
#undef SCC_KERNEL_NS
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_HAVE_AVX2_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SCC_KERNEL_NS avx2
#include "scc_cpu_kernels.h"
#undef SCC_KERNEL_NS
#pragma GCC pop_options
#endif

namespace scc_fast {
namespace {

// Workspace budget per chunk: the complex p + i*y maps of the chunk. About 2 MB keeps the transforms
// in cache (measured on a 2-core machine: 224x224 maps are 2x faster per map in batches of 4 than 72).
// SCC_FAST_NATIVE_CHUNK_BYTES overrides it (for tuning).
int64_t chunk_bytes() {
  const char* env = std::getenv("SCC_FAST_NATIVE_CHUNK_BYTES");
  if (env != nullptr) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return int64_t(2) << 20;
}
// Rows per work item aim at this many elements, so small maps still split over threads.
constexpr int64_t kBlockElems = 8192;

// Per-pair spatial sums from the build pass (shifted by the first voxel: s1 = sum (p - p0), ...).
enum SpatialSum { kS1 = 0, kS2, kT1, kT2, kSpy, kNumSpatial };
// Per-pair spectral sums from the sums pass.
enum SpectralSum { kTa = 0, kTb, kTab, kNumSpectral };

struct Geometry {
  int64_t n_vox = 1;  // N, voxels per map
  int64_t len = 1;    // L, length of the last spatial axis
  int64_t rows = 1;   // N / L
  int64_t half = 1;   // L / 2 + 1 bins of the last axis in the half spectrum
  int64_t rows_per_block = 1;
  int64_t blocks = 1;
  std::vector<int64_t> neg_row;  // row index of -k's leading coordinates
};

Geometry make_geometry(at::IntArrayRef spatial) {
  Geometry g;
  for (auto s : spatial) g.n_vox *= s;
  g.len = spatial.back();
  g.rows = g.n_vox / g.len;
  g.half = g.len / 2 + 1;
  g.rows_per_block = std::max<int64_t>(1, kBlockElems / g.len);
  g.blocks = (g.rows + g.rows_per_block - 1) / g.rows_per_block;
  const int64_t lead = static_cast<int64_t>(spatial.size()) - 1;
  g.neg_row.resize(g.rows);
  for (int64_t r = 0; r < g.rows; ++r) {
    int64_t rem = r, neg = 0, stride = 1;
    for (int64_t d = lead - 1; d >= 0; --d) {
      const int64_t size = spatial[d];
      const int64_t i = rem % size;
      rem /= size;
      neg += ((size - i) % size) * stride;
      stride *= size;
    }
    g.neg_row[r] = neg;
  }
  return g;
}

// Everything known about one pair once its sums are in.
struct PairCoef {
  double c_a = 0, c_ab = 0;  // field (c_a + c_ab B_k) U_k
  double c_p = 0, c_y = 0;   // spatial terms c_p (p - off_p) + c_y (y - off_y)
  double off_p = 0, off_y = 0;
  double scc = 0;
  bool valid = false;
};

// The zero tests of scc_fast/_numerics.py, with eps of the working dtype as there.
// An Inf energy or cross sum (Inf in the input with validate=False) is not "zero": it propagates.
inline bool variance_is_zero(double var, double energy, double total, double eps) {
  return ((var <= 64 * eps * energy) || (energy <= 1e3 * eps * eps * total)) && std::isfinite(total);
}
// Also zero where A or B itself is rounding noise over K (a constant map: its FFT leaves eps-sized
// residues off DC that would otherwise drive a noise phase correlation).
inline bool product_is_zero(double cross, double energy_a, double energy_b, double total_a, double total_b,
                            double eps) {
  const bool zero = (cross <= 64 * eps * std::sqrt(energy_a * energy_b)) ||
                    (energy_a <= 1e3 * eps * eps * total_a) || (energy_b <= 1e3 * eps * eps * total_b);
  return zero && std::isfinite(cross);
}

// Port of torch_fft._one_class's sums and torch_fft.pair_coefficients for one pair.
PairCoef pair_coefficients(
    const double* sp,
    const double* ss,
    double shift_p,
    double shift_y,
    bool labels,
    int64_t n_vox,
    bool include_dc,
    double w_mag,
    double w_phase,
    double eps) {
  const double N = static_cast<double>(n_vox);
  const double n = include_dc ? N : N - 1;
  // p: centered sums by the shifted-data formula (no cancellation for near-constant maps).
  const double nvar_p = std::max(0.0, sp[kS2] - sp[kS1] * sp[kS1] / N);  // sum (p - mean p)^2
  const double mean_p = shift_p + sp[kS1] / N;
  const double total_a = N * (nvar_p + N * mean_p * mean_p);
  const double energy_a = include_dc ? total_a : N * nvar_p;
  double mean_y, total_b, energy_b;
  bool valid;
  if (labels) {
    const double count = sp[kT1];  // an exact integer in double
    mean_y = count / N;
    total_b = N * count;
    energy_b = include_dc ? total_b : count * (N - count);
    valid = include_dc ? count > 0 : count * (N - count) > 0;
  } else {
    const double nvar_y = std::max(0.0, sp[kT2] - sp[kT1] * sp[kT1] / N);
    mean_y = shift_y + sp[kT1] / N;
    total_b = N * (nvar_y + N * mean_y * mean_y);
    energy_b = include_dc ? total_b : N * nvar_y;
    valid = !(energy_b <= 1e-9 * total_b);  // DEGENERATE_TARGET_RTOL; a NaN target stays valid (NaN propagates)
  }
  const double cpy = sp[kSpy] - sp[kS1] * sp[kT1] / N;  // sum (p - mean p)(y - mean y)
  const double cross = include_dc ? N * (cpy + N * mean_p * mean_y) : N * cpy;

  const double t_a = ss[kTa], t_b = ss[kTb], t_ab = ss[kTab];
  const double var_a = energy_a - t_a * t_a / n;
  const double var_b = energy_b - t_b * t_b / n;
  const double cov = t_ab - t_a * t_b / n;
  const bool zero_mag =
      variance_is_zero(var_a, energy_a, total_a, eps) || variance_is_zero(var_b, energy_b, total_b, eps);
  const bool zero_phase = product_is_zero(t_ab, energy_a, energy_b, total_a, total_b, eps);
  const double den = zero_mag ? 1.0 : std::sqrt(var_a * var_b);
  const double rho_mag = zero_mag ? 0.0 : cov / den;
  const double rho_phase = zero_phase ? 0.0 : cross / t_ab;
  const double wm = zero_mag ? 0.0 : w_mag / den;
  const double var_a_safe = zero_mag ? 1.0 : var_a;
  const double wp = zero_phase ? 0.0 : w_phase / t_ab;

  PairCoef c;
  c.c_ab = wm - wp * rho_phase;
  c.c_a = (-wm * t_b + w_mag * rho_mag * t_a / var_a_safe) / n;
  const double c_aa = -0.5 * w_mag * rho_mag / var_a_safe;
  c.c_p = 2 * N * c_aa;
  c.c_y = N * wp;
  c.off_p = include_dc ? 0.0 : mean_p;
  c.off_y = include_dc ? 0.0 : mean_y;
  c.scc = w_mag * rho_mag + w_phase * rho_phase;
  c.valid = valid;
  return c;
}

template <typename scalar_t, typename Y, typename K>
void run(
    const at::Tensor& probs,
    const Y* tdata,
    bool labels,
    int64_t first_class,
    bool include_dc,
    double w_mag,
    double w_phase,
    bool need_grad,
    at::Tensor& scc_out,
    at::Tensor& valid_out,
    at::Tensor& grad_out) {
  using cplx = c10::complex<scalar_t>;
  const int64_t n_chan = probs.size(1);
  const int64_t n_pairs = probs.size(0) * n_chan;
  const auto spatial = probs.sizes().slice(2);
  const Geometry g = make_geometry(spatial);
  const int64_t N = g.n_vox, L = g.len, rpb = g.rows_per_block, nb = g.blocks;
  const int64_t* neg_row = g.neg_row.data();
  const double eps = std::numeric_limits<scalar_t>::epsilon();
  // Target map of pair q: the image's labels (class label first_class + c) or the pair's float map.
  auto tmap = [&](int64_t q) { return labels ? tdata + (q / n_chan) * N : tdata + q * N; };
  auto tlabel = [&](int64_t q) { return first_class + q % n_chan; };

  std::vector<int64_t> fft_dims;
  for (int64_t d = 1; d <= static_cast<int64_t>(spatial.size()); ++d) fft_dims.push_back(d);

  // Chunks run one after another; inside a chunk every pass is parallel over (pair, block of rows)
  // and the threads split the maps of each transform. (A variant giving each thread whole chunks
  // needed a workspace per thread, which cost more peak memory than backend "torch" at 2 threads,
  // and was not faster.)
  const int64_t map_bytes = N * static_cast<int64_t>(sizeof(cplx));
  int64_t chunk = chunk_bytes() / map_bytes;
  chunk = std::max<int64_t>(2, chunk - chunk % 2);
  chunk = std::min(chunk, n_pairs);
  const int64_t n_chunks = (n_pairs + chunk - 1) / chunk;

  const scalar_t* p_all = probs.data_ptr<scalar_t>();
  scalar_t* scc_ptr = scc_out.data_ptr<scalar_t>();
  bool* valid_ptr = valid_out.data_ptr<bool>();
  scalar_t* grad_ptr = need_grad ? grad_out.data_ptr<scalar_t>() : nullptr;
  const auto complex_options = probs.options().dtype(c10::toComplexType(probs.scalar_type()));

  // Transforms of a batch of maps: each thread transforms its share of the maps in one single-threaded
  // call (measured: MKL's own threading of one 64^3 transform on 2 busy cores was 5-10x slower than one
  // thread). map[i] points to map i's spectrum, parts keeps the results alive.
  auto transform = [&](const at::Tensor& in, bool forward, std::vector<at::Tensor>& parts,
                       std::vector<const scalar_t*>& map) {
    const int64_t n = in.size(0);
    parts.assign(n, at::Tensor());
    map.assign(n, nullptr);
    auto body = [&](int64_t b, int64_t e) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      const at::Tensor part = in.narrow(0, b, e - b);
      at::Tensor out = forward ? at::fft_fftn(part, std::nullopt, fft_dims, std::nullopt)
                               : at::fft_ifftn(part, std::nullopt, fft_dims, "forward");
      out = out.contiguous();
      const scalar_t* base = reinterpret_cast<const scalar_t*>(out.data_ptr<cplx>());
      for (int64_t i = b; i < e; ++i) map[i] = base + 2 * (i - b) * N;
      parts[b] = std::move(out);
    };
    if (n == 1 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
      // One map: run it on one thread inside a parallel region, where MKL stays single-threaded.
      at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t b, int64_t) {
        if (b == 0) body(0, 1);
      });
    } else {
      at::parallel_for(0, n, 1, body);
    }
  };

  auto run_chunks = [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<int64_t> ws_shape{chunk};
    ws_shape.insert(ws_shape.end(), spatial.begin(), spatial.end());
    at::Tensor zbuf = at::empty(ws_shape, complex_options);
    scalar_t* z = reinterpret_cast<scalar_t*>(zbuf.data_ptr<cplx>());
    std::vector<double> part_sp(chunk * nb * kNumSpatial);
    std::vector<double> part_ss(chunk * nb * kNumSpectral);
    std::vector<PairCoef> coef(chunk);
    std::vector<at::Tensor> Zparts, wparts;
    std::vector<const scalar_t*> Zmap, wmap;

    for (int64_t ci = chunk_begin; ci < chunk_end; ++ci) {
      const int64_t q0 = ci * chunk;
      const int64_t nc = std::min(chunk, n_pairs - q0);

      // 1. Build p + i*y and the spatial sums (shifted by the first voxel of each map).
      at::parallel_for(0, nc * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t s = item / nb, blk = item % nb, q = q0 + s;
          const scalar_t* p = p_all + q * N;
          const Y* ym = tmap(q);
          const int64_t cl = tlabel(q);
          const double ky = labels ? 0.0 : static_cast<double>(ym[0]);
          double* acc = &part_sp[(s * nb + blk) * kNumSpatial];
          std::fill(acc, acc + kNumSpatial, 0.0);
          // Row by row: short sums in double, then added up (pairwise-like accuracy).
          const int64_t r_end = std::min(g.rows, (blk + 1) * rpb);
          for (int64_t r = blk * rpb; r < r_end; ++r)
            K::template build<scalar_t, Y>(p, ym, cl, p[0], ky, z + 2 * s * N, r * L, (r + 1) * L, acc);
        }
      });

      // 2. One complex transform carries the spectra of p and y.
      transform(zbuf.narrow(0, 0, nc), true, Zparts, Zmap);

      // 3. T_a, T_b, T_ab over the weighted half spectrum.
      at::parallel_for(0, nc * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t s = item / nb, blk = item % nb;
          double* acc = &part_ss[(s * nb + blk) * kNumSpectral];
          std::fill(acc, acc + kNumSpectral, 0.0);
          K::template sums<scalar_t>(Zmap[s], neg_row, L, blk * rpb, std::min(g.rows, (blk + 1) * rpb),
                                     include_dc, acc);
        }
      });

      // 4. Per-pair scalars (partials added in block order: deterministic).
      for (int64_t s = 0; s < nc; ++s) {
        double sp[kNumSpatial] = {0, 0, 0, 0, 0}, ss[kNumSpectral] = {0, 0, 0};
        for (int64_t blk = 0; blk < nb; ++blk) {
          for (int k = 0; k < kNumSpatial; ++k) sp[k] += part_sp[(s * nb + blk) * kNumSpatial + k];
          for (int k = 0; k < kNumSpectral; ++k) ss[k] += part_ss[(s * nb + blk) * kNumSpectral + k];
        }
        const int64_t q = q0 + s;
        const double kp = p_all[q * N];
        const double ky = labels ? 0.0 : static_cast<double>(tmap(q)[0]);
        coef[s] = pair_coefficients(sp, ss, kp, ky, labels, N, include_dc, w_mag, w_phase, eps);
        scc_ptr[q] = static_cast<scalar_t>(coef[s].scc);
        valid_ptr[q] = coef[s].valid;
      }
      if (!need_grad) continue;

      // 5. Fields of two pairs packed in one spectrum, written over z (consumed by the transform).
      const int64_t n_packed = (nc + 1) / 2;
      at::parallel_for(0, n_packed * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t m = item / nb, blk = item % nb;
          const int64_t s1 = 2 * m, s2 = 2 * m + 1;
          const bool has2 = s2 < nc;
          const scalar_t* Z1 = Zmap[s1];
          K::template field<scalar_t>(
              Z1, has2 ? Zmap[s2] : Z1, static_cast<scalar_t>(coef[s1].c_a), static_cast<scalar_t>(coef[s1].c_ab),
              has2 ? static_cast<scalar_t>(coef[s2].c_a) : scalar_t(0),
              has2 ? static_cast<scalar_t>(coef[s2].c_ab) : scalar_t(0), z + 2 * m * N, neg_row, L, blk * rpb,
              std::min(g.rows, (blk + 1) * rpb), include_dc);
        }
      });
      Zparts.clear();

      // 6. Unnormalised inverse transform (DFT^H = N * ifft), then the spatial terms.
      transform(zbuf.narrow(0, 0, n_packed), false, wparts, wmap);
      at::parallel_for(0, nc * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t s = item / nb, blk = item % nb, q = q0 + s;
          const PairCoef& c = coef[s];
          K::template final<scalar_t, Y>(
              wmap[s / 2], static_cast<int>(s % 2), p_all + q * N, tmap(q), tlabel(q),
              static_cast<scalar_t>(c.c_p), static_cast<scalar_t>(c.c_y), static_cast<scalar_t>(c.off_p),
              static_cast<scalar_t>(c.off_y), grad_ptr + q * N, blk * rpb * L, std::min(g.rows, (blk + 1) * rpb) * L);
        }
      });
    }
  };

  run_chunks(0, n_chunks);
}

// AVX2 + FMA variant of the inner loops when this CPU has them (SCC_FAST_NATIVE_ISA=baseline forces
// the portable build, for tests and comparisons).
bool use_avx2() {
#ifdef SCC_HAVE_AVX2_KERNELS
  const char* isa = std::getenv("SCC_FAST_NATIVE_ISA");
  if (isa != nullptr && std::string(isa) == "baseline") return false;
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

template <typename scalar_t, typename Y>
void run_isa(const at::Tensor& probs, const Y* tdata, bool labels, int64_t first_class, bool include_dc, double w_mag,
             double w_phase, bool need_grad, at::Tensor& scc, at::Tensor& valid, at::Tensor& grad) {
#ifdef SCC_HAVE_AVX2_KERNELS
  if (use_avx2()) {
    run<scalar_t, Y, avx2::Kernels>(probs, tdata, labels, first_class, include_dc, w_mag, w_phase, need_grad, scc,
                                    valid, grad);
    return;
  }
#endif
  run<scalar_t, Y, baseline::Kernels>(probs, tdata, labels, first_class, include_dc, w_mag, w_phase, need_grad, scc,
                                      valid, grad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scc_forward_cpu(
    const at::Tensor& probs_in,
    const at::Tensor& target_in,
    int64_t first_class,
    bool include_dc,
    double magnitude_weight,
    double phase_weight,
    bool need_grad) {
  TORCH_CHECK(probs_in.device().is_cpu(), "scc_forward (CPU): probs must be a CPU tensor, got ", probs_in.device());
  TORCH_CHECK(
      probs_in.scalar_type() == at::kFloat || probs_in.scalar_type() == at::kDouble,
      "scc_forward: probs must be float32 or float64, got ",
      probs_in.scalar_type());
  TORCH_CHECK(
      probs_in.dim() >= 3, "scc_forward: probs must be B x C x spatial (3 dims or more), got shape ", probs_in.sizes());
  TORCH_CHECK(probs_in.size(0) >= 1 && probs_in.size(1) >= 1, "scc_forward: probs must have B >= 1 and C >= 1, got shape ",
              probs_in.sizes());
  TORCH_CHECK(probs_in.numel() / (probs_in.size(0) * probs_in.size(1)) >= 2,
              "scc_forward: the spatial size must hold at least 2 voxels, got shape ", probs_in.sizes());
  const at::Tensor probs = probs_in.contiguous();
  const int64_t B = probs.size(0), C = probs.size(1);
  const int64_t N = probs.numel() / (B * C);
  const bool labels = !at::isFloatingType(target_in.scalar_type());
  if (labels) {
    TORCH_CHECK(!target_in.is_complex() && target_in.scalar_type() != at::kBool,
                "scc_forward: target must be integer labels or a float tensor, got ", target_in.scalar_type());
    std::vector<int64_t> want{B};
    want.insert(want.end(), probs.sizes().begin() + 2, probs.sizes().end());
    TORCH_CHECK(target_in.sizes() == at::IntArrayRef(want), "scc_forward: integer labels must be B x spatial = ", want,
                ", got ", target_in.sizes());
  } else {
    TORCH_CHECK(target_in.sizes() == probs.sizes(), "scc_forward: a float target must have the shape of probs ",
                probs.sizes(), ", got ", target_in.sizes());
  }
  TORCH_CHECK(target_in.device().is_cpu(), "scc_forward (CPU): target must be a CPU tensor, got ", target_in.device());

  at::Tensor scc = at::empty({B, C}, probs.options());
  at::Tensor valid = at::empty({B, C}, probs.options().dtype(at::kBool));
  at::Tensor grad = need_grad ? at::empty(probs.sizes(), probs.options()) : at::empty({0}, probs.options());

  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "scc_forward_cpu", [&] {
    const double wm = magnitude_weight, wp = phase_weight;
    if (labels) {
      // int64 and int32 labels are read as they are; narrower integer types are widened once.
      const at::Tensor t =
          target_in.scalar_type() == at::kLong ? target_in.contiguous() : target_in.to(at::kInt).contiguous();
      if (t.scalar_type() == at::kLong)
        run_isa<scalar_t>(probs, t.data_ptr<int64_t>(), true, first_class, include_dc, wm, wp, need_grad, scc, valid, grad);
      else
        run_isa<scalar_t>(probs, t.data_ptr<int32_t>(), true, first_class, include_dc, wm, wp, need_grad, scc, valid, grad);
    } else {
      const at::Tensor t = target_in.to(probs.scalar_type()).contiguous();
      run_isa<scalar_t>(probs, t.data_ptr<scalar_t>(), false, 0, include_dc, wm, wp, need_grad, scc, valid, grad);
    }
  });
  return {scc, valid, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(scc_fast, CPU, m) {
  m.impl("scc_forward", &scc_forward_cpu);
}

}  // namespace scc_fast
