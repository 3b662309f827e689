"""Launch-geometry arithmetic for the host side of the Triton kernels, in plain Python.

``triton.next_power_of_2`` and ``triton.cdiv`` are ``ConstexprFunction`` objects, far slower a
call than the integer arithmetic (bench/RESULTS.md, 'CPU: class 0 derived from the other classes
...'), and a Triton-backend step makes several of them on a host that a GPU step waits for
(``scc-fast bench host-overhead``).
"""

from __future__ import annotations

__all__ = ["cdiv", "next_power_of_2"]


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n`` <= 1), as ``triton.next_power_of_2``."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, as ``triton.cdiv``."""
    return -(-int(a) // int(b))
