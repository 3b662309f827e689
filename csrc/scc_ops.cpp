// Operator schema of the native SCC kernel and the Python module entry point of scc_fast._C.
//
// The schema is device independent; each device registers its kernel in its own file
// (csrc/cpu/scc_cpu.cpp), torchvision style. The fake (meta) kernel and the autograd formula are
// registered from Python (scc_fast/backends/native.py) with torch.library.register_fake and
// torch.library.register_autograd, so torch.compile can trace the op without running it.

#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(scc_fast, m) {
  // input: B x C x spatial, float32/float64: probabilities (activation 0) or logits of a softmax over
  // C (1) or an elementwise sigmoid (2), applied inside the kernel. Channels first_channel.. are in the
  // loss (C' of them). target: integer labels B x spatial (label first_class + j is loss channel j,
  // anything else is 0 everywhere) or a float target B x C' x spatial. Voxels labelled ignore_label
  // count as p = y = 0 in every channel.
  // Returns (scc B x C', valid B x C' bool, field, stats, flags): field = dSCC[b, c]/dp[b, c]
  // (B x C' x spatial) when need_grad, else an empty tensor of shape (0,); stats = per-voxel activation
  // statistics (B x 2 x spatial: softmax max and keep / sum exp, or the ignore mask) for scc_backward,
  // or (0,); flags = B uint8, what the passes saw in each image, for input validation at no extra pass:
  // bit 1, a NaN or Inf in the input (tested by the softmax, which reads every channel; 0 for the other
  // activations), bit 2, a voxel whose integer label is none of the loss channels' labels (an ignored
  // label counts as none; 0 for float targets).
  // The gradient field is computed in the forward call so that backward is one elementwise pass.
  m.def(
      "scc_forward(Tensor input, Tensor target, int activation, int first_channel, int first_class, "
      "int? ignore_label, bool include_dc, float magnitude_weight, float phase_weight, bool need_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // dLoss/dinput from grad_scc (B x C', the upstream gradient of scc) and scc_forward's field and stats.
  m.def(
      "scc_backward(Tensor field, Tensor grad_scc, Tensor input, Tensor stats, int activation, "
      "int first_channel) -> Tensor");
}

// `import scc_fast._C` loads this library and runs the static registrations above; the module itself
// is empty (the operator is reached through torch.ops.scc_fast).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Native SCC operator; use torch.ops.scc_fast.scc_forward",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
