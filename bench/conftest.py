"""pytest-benchmark suite of the benchmark cases of docs/loss.md section 8: ``pytest bench`` (not part of ``pytest tests``).

One ``benchmark.group`` per case, every available backend and the ``reference`` (eager; under
``torch.compile`` too on CUDA or with ``SCC_BENCH_COMPILE=1``), forward and forward + backward.
Compare commits with pytest-benchmark's own storage::

    pytest bench --benchmark-autosave            # on the old commit
    pytest bench --benchmark-compare             # on the new one: compares with the last saved run

Shapes: full size on CUDA; on a CPU small versions (scale in each benchmark's extra_info)
so the suite runs in a few minutes; ``SCC_BENCH_FULL=1`` uses ``scc-fast bench``'s CPU shapes.
``SCC_BENCH_DEVICE=cpu|cuda`` picks the device. Peak memory of one call is recorded in each
benchmark's extra_info (in-process; ``scc-fast bench`` gives the fresh-process CPU number).
"""

from __future__ import annotations

import os


def pytest_report_header(config):
    import torch

    from scc_fast import available_backends

    device = os.environ.get("SCC_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    ok = [n for n, s in available_backends().items() if s.available]
    return [f"scc_fast bench: device {device}, torch {torch.__version__}, available backends {ok}"]
