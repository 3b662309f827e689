"""The host's launch-geometry helpers (scc_fast/_grid.py) equal triton's, which cost ~50x more a call."""

from __future__ import annotations

import pytest

from scc_fast._grid import cdiv, next_power_of_2

triton = pytest.importorskip("triton")


def test_next_power_of_2_matches_triton():
    for n in list(range(1, 5000)) + [2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    assert next_power_of_2(0) == 1


def test_cdiv_matches_triton():
    for a in range(0, 600, 7):
        for b in (1, 2, 3, 16, 64, 1024):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
