// Operator schema of the native SCC kernel and the Python module entry point of scc_fast._C.
//
// The schema is device independent; each device registers its kernel in its own file
// (csrc/cpu/scc_cpu.cpp), torchvision style. The fake (meta) kernel and the autograd formula are
// registered from Python (scc_fast/backends/native.py) with torch.library.register_fake and
// torch.library.register_autograd, so torch.compile can trace the op without running it.

#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(scc_fast, m) {
  // probs: B x C' x spatial, float32/float64. target: integer labels B x spatial (label
  // first_class + j is channel j, anything else is 0 everywhere) or a float target B x C' x spatial.
  // Returns (scc B x C', valid B x C' bool, grad): grad = dSCC[b, c]/dprobs[b, c] (B x C' x spatial)
  // when need_grad, else an empty tensor of shape (0,). The gradient is computed in the forward call
  // so that backward is a multiplication by grad_output.
  m.def(
      "scc_forward(Tensor probs, Tensor target, int first_class, bool include_dc, "
      "float magnitude_weight, float phase_weight, bool need_grad) -> (Tensor, Tensor, Tensor)");
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
