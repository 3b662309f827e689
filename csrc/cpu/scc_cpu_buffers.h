// Buffers of the CPU operator (its outputs, the tensors saved for backward, its workspace), kept
// for reuse when they are released.
//
// Training calls the operator at one shape step after step, and each call needs the same buffers:
// the gradient field and statistics saved for backward, the chunk workspace, the gradient of the
// input. Fresh from the system allocator their pages are first touched in every call, a cost that
// shows in every step (measured: bench/RESULTS.md, 'CPU: transforms in place, operator buffers
// reused'), while glibc returns large freed blocks to the system (or keeps them) depending on its
// trim heuristics. Released buffers are kept here up to the setting cache_mb MiB
// (scc_cpu_settings.h; (default: 64 MiB, or the bytes of the latest call's buffers where those are
// more; 0 turns the cache off), the oldest released going first when the cap is reached; a request
// takes a kept block of exactly its size.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace scc_fast {

// at::empty(sizes, options) (CPU, contiguous) served from the cache of released buffers.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// The bytes of buffers the current call takes (outputs, saved tensors, workspace, the input
// gradient its backward will make): the default cap is at least this, so one step's buffers fit.
void set_call_bytes(size_t bytes);

// Bytes of released buffers held by the cache now.
int64_t cached_bytes();

// Frees every released buffer the cache holds.
void release_cached_buffers();

}  // namespace scc_fast
