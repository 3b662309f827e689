"""Measured dispatch: which backend ``backend="auto"`` tries first, per device and shape.

The ranking comes from a table of timings measured on real hardware and committed with the
package (``dispatch_table.json`` next to this file; ``scc-fast bench gpu-3d`` writes it), not
from a guess. Format (``"format": "scc_fast.dispatch/1"``)::

    {
      "format": "scc_fast.dispatch/1",
      "measured": true,                 # false: no measurements yet, "auto" uses AUTO_ORDER
      "note": "...",
      "provenance": {"card": ..., "date": ..., "command": ..., "torch": ..., "triton": ..., "commit": ...},
      "rows": [
        {"case": "btcv-3d", "device_kind": "cuda", "card": "NVIDIA H100 80GB HBM3",
         "ndim": 3, "n_min": 1441792, "n_max": null,      # voxels per map N, n_min <= N < n_max
         "shape": [2, 14, 96, 96, 96],
         "ranking": ["triton_fft", "torch"],               # fastest first, correct ones only
         "median_ms": {"triton_fft": 1.9, "torch": 4.2, "reference": 30.1}}
      ]
    }

A row matches an input when its device kind and number of spatial dims are the input's and N
lies in ``[n_min, n_max)`` (``null`` = unbounded). Rows measured on the input's own card are
preferred; otherwise a row of the same device kind is used and the explanation says so.
Backends a ranking does not name keep their static order after the ranked ones. A table
written by a ``--smoke`` run (``"smoke": true``) is valid but never decides. The file named
by ``SCC_FAST_DISPATCH_TABLE`` replaces the packaged table. An unreadable or malformed table
never breaks a training step: "auto" falls back to the static order and says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import _settings

__all__ = ["FORMAT", "TABLE_ENV_VAR", "DEFAULT_TABLE", "Decision", "load_table", "validate_table", "lookup", "clear_cache"]

FORMAT = "scc_fast.dispatch/1"
TABLE_ENV_VAR = _settings.DISPATCH_TABLE_ENV
DEFAULT_TABLE = Path(__file__).with_name("dispatch_table.json")

_cache: dict[str, dict[str, Any]] = {}
_card_names: dict[tuple[str, int | None], str] = {}
_decisions: dict[tuple, "Decision"] = {}
_entries: dict[str, tuple[str, dict[str, Any] | None, str | None]] = {}


class Decision(NamedTuple):
    """The table's answer: a ranking (None when no row decides) and a sentence saying why."""

    ranking: tuple[str, ...] | None
    note: str


def clear_cache() -> None:
    """Forget loaded tables and decisions (a table is read once per path and process)."""
    _cache.clear()
    _decisions.clear()
    _entries.clear()


def validate_table(table: Any, source: str = "dispatch table") -> None:
    """Raise ``ValueError`` naming the problem if ``table`` is not a valid dispatch table."""
    if not isinstance(table, dict):
        raise ValueError(f"{source} must be a JSON object, got {type(table).__name__}")
    if table.get("format") != FORMAT:
        raise ValueError(f"{source} must have \"format\": {FORMAT!r}, got {table.get('format')!r}")
    if not isinstance(table.get("measured"), bool):
        raise ValueError(f"{source} must have a boolean \"measured\", got {table.get('measured')!r}")
    rows = table.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{source} must have a list \"rows\", got {type(rows).__name__}")
    if table["measured"] and not rows:
        raise ValueError(f"{source} says \"measured\": true but has no rows")
    if table["measured"] and not isinstance(table.get("provenance"), dict):
        raise ValueError(f"{source} says \"measured\": true but has no \"provenance\" object (card, date, command)")
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object, got {type(row).__name__}")
        for key, kind in (("device_kind", str), ("ndim", int), ("n_min", int), ("ranking", list)):
            if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
                raise ValueError(f"{where} must have {key!r} of type {kind.__name__}, got {row.get(key)!r}")
        if row.get("n_max") is not None and (not isinstance(row["n_max"], int) or row["n_max"] <= row["n_min"]):
            raise ValueError(f"{where} must have 'n_max' null or an int > n_min={row['n_min']}, got {row['n_max']!r}")
        if not all(isinstance(name, str) for name in row["ranking"]):
            raise ValueError(f"{where} 'ranking' must be a list of backend names, got {row['ranking']!r}")


def table_path() -> Path:
    """The table in use: ``$SCC_FAST_DISPATCH_TABLE`` if set, else the packaged one."""
    env = _settings.env_dispatch_table()
    return Path(env) if env else DEFAULT_TABLE


def load_table(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and validate a dispatch table (cached per path). Raises ``ValueError`` if malformed."""
    path = Path(path) if path is not None else table_path()
    key = str(path)
    if key not in _cache:
        try:
            table = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read dispatch table {path}: {exc}") from exc
        validate_table(table, f"dispatch table {path}")
        _cache[key] = table
    return _cache[key]


def _entry(key: str) -> tuple[str, dict[str, Any] | None, str | None]:
    """(display name, table or None, error or None) for a table key ("" = the packaged table)."""
    hit = _entries.get(key)
    if hit is None:
        path = Path(key) if key else DEFAULT_TABLE
        try:
            hit = (path.name, load_table(path), None)
        except ValueError as exc:
            hit = (path.name, None, str(exc))
        _entries[key] = hit
    return hit


def _card(device: torch.device) -> str | None:
    if device.type != "cuda" or torch.compiler.is_compiling() or not torch.cuda.is_available():
        return None
    key = (device.type, device.index)
    if key not in _card_names:
        _card_names[key] = torch.cuda.get_device_name(device)
    return _card_names[key]


def _describe(row: dict[str, Any]) -> str:
    upper = "inf" if row.get("n_max") is None else str(row["n_max"])
    name = row.get("case", "?")
    return f"row {name!r} ({row['device_kind']}, {row['ndim']}D, N in [{row['n_min']}, {upper}))"


def _provenance(table: dict[str, Any], row: dict[str, Any]) -> str:
    prov = {**(table.get("provenance") or {}), **(row.get("provenance") or {})}
    parts = [f"{k} {prov[k]}" for k in ("card", "date", "command") if prov.get(k)]
    return "measured " + ", ".join(parts) if parts else "no provenance recorded"


def lookup(
    device: torch.device,
    spatial: tuple[int, ...],
    *,
    path: str | os.PathLike | None = None,
    card: str | None = None,
) -> Decision:
    """The table's ranking for maps of shape ``spatial`` on ``device``, and why.

    Args:
        device: where the input lives (its type selects the rows; on CUDA its card is preferred).
        spatial: the spatial shape (H, W) or (D, H, W).
        path: a table file instead of the one in use (see :func:`table_path`).
        card: the card name to prefer (default: the name of ``device``, for CUDA).

    Returns:
        ``Decision(ranking, note)``: ``ranking`` is None when no row decides (no table, no
        measurements, no matching row, or a malformed table), and ``note`` says which.
    """
    # Cached per (table, device, shape), and the packaged table is read at import: a lookup is
    # then plain dict work, which torch.compile traces without a graph break.
    key = _settings.env_dispatch_table() if path is None else str(path)
    memo = (key, device.type, device.index, tuple(spatial), card)
    hit = _decisions.get(memo)
    if hit is not None:
        return hit
    name, table, error = _entry(key)
    decision = _decide(name, table, error, device, tuple(spatial), card)
    _decisions[memo] = decision
    return decision


def _decide(name, table, error, device, spatial, card) -> Decision:
    if table is None:
        return Decision(None, f"dispatch table unusable ({error}); static order used")
    if not table["measured"]:
        note = table.get("note") or "no GPU measurements yet"
        return Decision(None, f"dispatch table {name} has no measurements ({note}); static order used")
    if table.get("smoke"):
        return Decision(None, f"dispatch table {name} is from a --smoke run (timings meaningless); static order used")
    n_vox = 1
    for s in spatial:
        n_vox *= int(s)
    ndim = len(spatial)
    rows = [
        r
        for r in table["rows"]
        if r["device_kind"] == device.type
        and r["ndim"] == ndim
        and r["n_min"] <= n_vox
        and (r.get("n_max") is None or n_vox < r["n_max"])
    ]
    if not rows:
        return Decision(None, f"dispatch table {name} has no row for {device.type} {ndim}D N={n_vox}; static order used")
    card = (card if card is not None else _card(device)) or None
    same_card = [r for r in rows if card is not None and r.get("card") == card]
    row = (same_card or rows)[0]
    note = f"dispatch table {name} {_describe(row)} decided: ranking {row['ranking']}, {_provenance(table, row)}"
    if card is not None and not same_card and row.get("card"):
        note += f"; measured on {row['card']}, this device is {card}"
    return Decision(tuple(row["ranking"]), note)


def ranges_for(cases: list[dict[str, Any]]) -> list[tuple[int, int | None]]:
    """N ranges for measured cases: split at the geometric midpoints between neighbouring N.

    ``cases`` are dicts with ``device_kind``, ``ndim`` and ``n``; returns ``(n_min, n_max)`` per
    case, in the input order, such that the cases of one (device kind, ndim) cover all N >= 1.
    """
    out: list[tuple[int, int | None]] = [(1, None)] * len(cases)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((c["device_kind"], c["ndim"]), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: cases[i]["n"])
        bounds = [int(round((cases[a]["n"] * cases[b]["n"]) ** 0.5)) for a, b in zip(members, members[1:])]
        lows = [1, *bounds]
        highs: list[int | None] = [*bounds, None]
        for i, lo, hi in zip(members, lows, highs):
            out[i] = (lo, hi)
    return out


# Read the table in use now, outside any torch.compile trace (file reads cannot be traced).
_entry(_settings.env_dispatch_table())
