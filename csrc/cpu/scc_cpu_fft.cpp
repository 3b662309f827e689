// In-place transforms through MKL's DFTI (see scc_cpu_fft.h for why).
//
// The DFTI entry points are declared here (the MKL headers do not ship with torch) as weak
// symbols: they resolve to libtorch's exports where it has them and stay null elsewhere, so
// the operator loads against any torch build. The numeric values below are those of MKL's
// mkl_dfti.h (its public ABI, unchanged across MKL releases).

#include "scc_cpu_fft.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#if defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define SCC_DFTI_WEAK 1
extern "C" {
struct DFTI_DESCRIPTOR;
typedef struct DFTI_DESCRIPTOR* DFTI_DESCRIPTOR_HANDLE;
long DftiCreateDescriptor_s_md(DFTI_DESCRIPTOR_HANDLE*, int, long, ...) __attribute__((weak));
long DftiCreateDescriptor_d_md(DFTI_DESCRIPTOR_HANDLE*, int, long, ...) __attribute__((weak));
long DftiCreateDescriptor_s_1d(DFTI_DESCRIPTOR_HANDLE*, int, ...) __attribute__((weak));
long DftiCreateDescriptor_d_1d(DFTI_DESCRIPTOR_HANDLE*, int, ...) __attribute__((weak));
long DftiSetValue(DFTI_DESCRIPTOR_HANDLE, int, ...) __attribute__((weak));
long DftiCommitDescriptor(DFTI_DESCRIPTOR_HANDLE) __attribute__((weak));
long DftiComputeForward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiComputeBackward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiFreeDescriptor(DFTI_DESCRIPTOR_HANDLE*) __attribute__((weak));
char* DftiErrorMessage(long) __attribute__((weak));
}
#endif

namespace scc_fast {

#ifdef SCC_DFTI_WEAK
namespace {

// mkl_dfti.h: enum DFTI_CONFIG_PARAM and DFTI_CONFIG_VALUE.
constexpr int kDftiNumberOfTransforms = 7;
constexpr int kDftiInputStrides = 12;
constexpr int kDftiOutputStrides = 13;
constexpr int kDftiInputDistance = 14;
constexpr int kDftiOutputDistance = 15;
constexpr int kDftiThreadLimit = 27;
constexpr int kDftiComplex = 32;

bool symbols_present() {
  return DftiCreateDescriptor_s_md && DftiCreateDescriptor_d_md && DftiCreateDescriptor_s_1d &&
         DftiCreateDescriptor_d_1d && DftiSetValue && DftiCommitDescriptor && DftiComputeForward &&
         DftiComputeBackward && DftiFreeDescriptor && DftiErrorMessage;
}

std::string dfti_message(long status) {
  const char* m = DftiErrorMessage(status);
  return m != nullptr ? std::string(m) : "status " + std::to_string(status);
}

void check(long status, const char* what) {
  TORCH_CHECK(status == 0, "scc_fast native: MKL DFTI ", what, " failed: ", dfti_message(status));
}

struct Descriptor {
  DFTI_DESCRIPTOR_HANDLE handle = nullptr;
  ~Descriptor() {
    if (handle != nullptr) DftiFreeDescriptor(&handle);
  }
};

using Key = std::tuple<bool, std::vector<int64_t>, int64_t, int64_t, int64_t>;  // double, dims, row stride, count, threads

// Committing a descriptor costs about as much as a transform, so they are kept. A committed
// descriptor may be used by several threads at once (MKL's documented model); the shared_ptr
// keeps one alive for a caller while the cache is cleared.
std::shared_ptr<Descriptor> descriptor(bool is_double, at::IntArrayRef dims, int64_t row_stride, int64_t count,
                                       int64_t threads) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Descriptor>> cache;
  Key key{is_double, dims.vec(), row_stride, count, threads};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();  // many shapes: start over rather than grow without bound
  auto d = std::make_shared<Descriptor>();
  // Element strides of the map: rows `row_stride` apart, the leading axes packed above them.
  const int64_t rank = static_cast<int64_t>(dims.size());
  std::vector<long> strides(rank + 1, 1);
  strides[0] = 0;  // offset of the first element
  for (int64_t axis = rank - 2; axis >= 0; --axis)
    strides[axis + 1] =
        axis == rank - 2 ? static_cast<long>(row_stride) : strides[axis + 2] * static_cast<long>(dims[axis + 1]);
  const long distance = rank == 1 ? static_cast<long>(row_stride) : strides[1] * static_cast<long>(dims[0]);
  long status;
  if (dims.size() == 1) {
    status = is_double ? DftiCreateDescriptor_d_1d(&d->handle, kDftiComplex, static_cast<long>(dims[0]))
                       : DftiCreateDescriptor_s_1d(&d->handle, kDftiComplex, static_cast<long>(dims[0]));
  } else {
    std::vector<long> lengths(dims.begin(), dims.end());
    status = is_double ? DftiCreateDescriptor_d_md(&d->handle, kDftiComplex, static_cast<long>(dims.size()), lengths.data())
                       : DftiCreateDescriptor_s_md(&d->handle, kDftiComplex, static_cast<long>(dims.size()), lengths.data());
  }
  check(status, "descriptor creation");
  // Placement in place and scales of 1 in both directions are DFTI's defaults.
  check(DftiSetValue(d->handle, kDftiNumberOfTransforms, static_cast<long>(count)), "set number of transforms");
  check(DftiSetValue(d->handle, kDftiInputStrides, strides.data()), "set input strides");
  check(DftiSetValue(d->handle, kDftiOutputStrides, strides.data()), "set output strides");
  check(DftiSetValue(d->handle, kDftiInputDistance, distance), "set input distance");
  check(DftiSetValue(d->handle, kDftiOutputDistance, distance), "set output distance");
  check(DftiSetValue(d->handle, kDftiThreadLimit, static_cast<long>(threads)), "set thread limit");
  check(DftiCommitDescriptor(d->handle), "commit");
  cache.emplace(std::move(key), d);
  return d;
}

}  // namespace
#endif

FftChoice fft_choice() {
  return static_cast<FftChoice>(native_settings().fft.load(std::memory_order_relaxed));
}

bool inplace_fft_available(at::ScalarType real_dtype) {
  if (real_dtype != at::kFloat && real_dtype != at::kDouble) return false;
  if (fft_choice() == FftChoice::kAten) return false;
#ifdef SCC_DFTI_WEAK
  static const bool present = symbols_present();
  return present;
#else
  return false;
#endif
}

void inplace_fft(void* data, at::ScalarType real_dtype, at::IntArrayRef dims, int64_t row_stride, int64_t count,
                 bool forward, int64_t threads) {
#ifdef SCC_DFTI_WEAK
  TORCH_CHECK(inplace_fft_available(real_dtype), "scc_fast native: in-place transforms are not available");
  TORCH_CHECK(row_stride >= dims.back(), "scc_fast native: row stride ", row_stride, " is shorter than a row (",
              dims.back(), ")");
  if (count <= 0) return;
  auto d = descriptor(real_dtype == at::kDouble, dims, row_stride, count, std::max<int64_t>(1, threads));
  check(forward ? DftiComputeForward(d->handle, data) : DftiComputeBackward(d->handle, data),
        forward ? "forward transform" : "inverse transform");
#else
  (void)data, (void)dims, (void)row_stride, (void)count, (void)forward, (void)threads;
  TORCH_CHECK(false, "scc_fast native: in-place transforms are not available on this platform (real dtype ",
              real_dtype, ")");
#endif
}

}  // namespace scc_fast
