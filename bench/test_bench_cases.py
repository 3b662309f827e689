"""One benchmark group per benchmark case; rows: every available backend and the reference."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from scc_fast import available_backends
from scc_fast.benchmark.cases import Case, default_cases
from scc_fast.benchmark.measure import build_loss_fn, make_inputs, peak_memory

DEVICE = os.environ.get("SCC_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")

# Small CPU versions of the benchmark cases (about 30-100 ms per call for the reference on 2 cores).
_CPU_SMALL = {
    "synapse-2d": (2, 9, 224, 224),
    "polyp-2d": (1, 2, 256, 256),
    "brats-3d": (1, 4, 64, 64, 64),
    "btcv-3d": (1, 14, 48, 48, 48),
}


def bench_cases() -> dict[str, Case]:
    if DEVICE == "cuda":
        return default_cases("cuda", quick=False)
    if os.environ.get("SCC_BENCH_FULL") == "1":
        return default_cases("cpu", quick=False)
    return {name: Case(name, shape, name) for name, shape in _CPU_SMALL.items()}


def bench_labels() -> list[str]:
    labels = ["reference"]
    if DEVICE == "cuda" or os.environ.get("SCC_BENCH_COMPILE") == "1":
        labels.append("reference-compile")
    interp = DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    for name, status in available_backends().items():
        if name != "reference" and status.available and not (interp and name.startswith("triton")):
            labels.append(name)
    return labels


CASES = bench_cases()
LABELS = bench_labels()

ROUNDS = {"cuda": (20, 3), "cpu": (5, 1)}  # (rounds, warm-up rounds)


def _run(benchmark, case_name: str, label: str, mode: str, device: str) -> None:
    case = CASES[case_name]
    backend, compiled = ("reference", True) if label == "reference-compile" else (label, False)
    x, t = make_inputs(case.shape, device)
    fn = build_loss_fn(backend, compiled=compiled)
    try:
        fn(x, t).backward()  # first call: compilation, JIT, plan caches
    except RuntimeError as exc:
        if "cannot run" in str(exc):  # e.g. a 2D-only kernel on a 3D case
            pytest.skip(str(exc))
        raise
    x.grad = None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        x.grad = None
        loss = fn(x, t)
        if mode == "fwdbwd":
            loss.backward()
        sync()

    mem = peak_memory(fn, x, t, mode)
    benchmark.group = case_name
    benchmark.extra_info.update(
        case=case_name, shape="x".join(map(str, case.shape)), scale=case.scale_text, device=device,
        backend=label, mode=mode, peak_bytes_above_inputs=mem["peak_bytes"], peak_method=mem["method"],
    )
    rounds, warmup = ROUNDS[device]
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup, iterations=1)
    del x, t, fn
    gc.collect()


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_forward_backward(benchmark, case_name, label):
    _run(benchmark, case_name, label, "fwdbwd", DEVICE)


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_forward(benchmark, case_name, label):
    _run(benchmark, case_name, label, "fwd", DEVICE)
