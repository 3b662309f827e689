// In-place batched complex FFTs for the CPU operator.
//
// ATen's fftn/ifftn always return a new tensor: for the operator that is an output buffer per
// transform, first touched (page-faulted) in every call, next to the input it no longer needs.
// Where libtorch exports Intel MKL's DFTI entry points (the x86-64 builds of torch link MKL and
// export them) the maps are transformed in place with MKL directly: the same library and
// algorithm ATen calls, no output allocation. Elsewhere (no MKL, another platform, or
// the setting fft "aten") the operator keeps using ATen's out-of-place transforms. (Float32
// maps of the shapes it fits on AVX-512 CPUs take the operator's own transform, scc_cpu_radix_fft.h.)
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "scc_cpu_settings.h"

namespace scc_fast {

// The setting fft (scc_cpu_settings.h), read at every call.
FftChoice fft_choice();

// Whether MKL's in-place transforms are available for this dtype (float32 or float64 maps) and not
// switched off (the setting fft "aten").
bool inplace_fft_available(at::ScalarType real_dtype);

// Transforms `count` complex maps of shape `dims` at `data` in place, unnormalised in both
// directions (forward: exp(-i...), inverse: exp(+i...)), with at most `threads` threads (1 inside
// a parallel region). The rows (last axis) of a map start `row_stride` complex elements apart
// (>= dims.back(); the elements after a row are not read or written), the leading axes are packed
// above them, and the maps follow one another (rows * row_stride elements each). Throws
// (c10::Error) when MKL reports an error.
void inplace_fft(void* data, at::ScalarType real_dtype, at::IntArrayRef dims, int64_t row_stride, int64_t count,
                 bool forward, int64_t threads);

}  // namespace scc_fast
