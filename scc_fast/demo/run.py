"""The experiment behind ``scc-fast demo``: both losses x seeds, evaluation, report."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..losses import DEFAULT_LAMBDA_SPECTRAL
from .data import build_data
from .train import TrainConfig, evaluate, robustness, train_run

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    out: str = "demo_out"
    quick: bool = False
    dims: int = 2
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    source: str = "mni152"
    resolution: int = 2
    lambda_spectral: float = DEFAULT_LAMBDA_SPECTRAL
    train: TrainConfig = field(default_factory=TrainConfig)
    levels: dict = field(default_factory=dict)
    command: str = ""

    @classmethod
    def make(cls, *, quick: bool, dims: int, seeds: int | None = None, steps: int | None = None, **kwargs) -> "DemoConfig":
        """Defaults for the four modes (2D/3D x quick/full), then explicit overrides."""
        if dims == 2:
            train = TrainConfig(dims=2, steps=500 if quick else 2000, batch_size=8, channels=(8, 16, 32, 64), eval_every=50 if quick else 100)
        else:
            train = TrainConfig(
                dims=3, steps=300 if quick else 1000, batch_size=1, lr=3e-3, channels=(8, 16, 32),
                eval_every=50 if quick else 100, patch=(12, 0, 0),
            )
        if steps is not None:
            train.steps = steps
            train.eval_every = min(train.eval_every, steps)
        n_seeds = seeds if seeds is not None else (3 if quick else 5)
        levels = (
            {"noise": [0.0, 0.05, 0.1, 0.2, 0.3], "gamma": [0.5, 0.75, 1.0, 1.5, 2.0], "bias": [0.0, 0.25, 0.5, 0.75]}
            if quick
            else {
                "noise": [0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
                "gamma": [0.4, 0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5],
                "bias": [0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0],
            }
        )
        return cls(quick=quick, dims=dims, seeds=tuple(range(n_seeds)), train=train, levels=levels, **kwargs)


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Train Dice+CE and Dice+CE+SCC with each seed, evaluate, write ``report.md``, figures and
    ``results.json`` into ``cfg.out``; return the results dictionary."""
    from . import report  # matplotlib is imported there, only when the demo really runs

    report.require_matplotlib()
    os.makedirs(cfg.out, exist_ok=True)
    t_start, c_start = time.perf_counter(), time.process_time()
    data = build_data(cfg.source, resolution=cfg.resolution)
    log(
        f"scc-fast demo ({cfg.dims}D{', quick' if cfg.quick else ''}): {cfg.source} data, slices {data.info['slices_used']}, "
        f"{data.split.train.size} train / {data.split.test.size} test axial slices in slabs of {data.info['slab']} "
        f"with a {data.split.gap}-slice gap; slice {data.image.shape[1]} x {data.image.shape[2]}; "
        f"{len(cfg.seeds)} seeds x 2 losses x {cfg.train.steps} steps; torch threads {torch.get_num_threads()}"
    )
    losses = {"Dice+CE": 0.0, "Dice+CE+SCC": cfg.lambda_spectral}
    runs: dict[str, list[dict]] = {name: [] for name in losses}
    models: dict[str, list[torch.nn.Module]] = {name: [] for name in losses}
    n_runs, k = len(cfg.seeds) * len(losses), 0
    for seed in cfg.seeds:
        for name, lam in losses.items():
            k += 1
            log(f"run {k}/{n_runs}: {name} (lambda_spectral={lam}), seed {seed}")
            res = train_run(data, cfg.train, loss_name=name, lambda_spectral=lam, seed=seed, log=log)
            clean = evaluate(res.model, data, cfg.dims)
            rob = robustness(res.model, data, cfg.dims, cfg.levels)
            log(
                f"  done in {res.seconds:.0f} s: test Dice per class "
                + ", ".join(f"{d:.4f}" for d in clean["dice"][1:])
                + f"; ECE {clean['ece']:.4f} (brain {clean['ece_brain']:.4f})"
            )
            runs[name].append(
                {
                    "seed": seed, "seconds": res.seconds, "clean": clean, "robustness": rob,
                    "curve": {"steps": res.steps, "train_loss": [round(v, 5) for v in res.train_loss], "eval_steps": res.eval_steps, "eval_dice": res.eval_dice},
                }
            )
            models[name].append(res.model)
    results = {
        "config": {**asdict(cfg), "train": asdict(cfg.train)},
        "data": data.info,
        "losses": losses,
        "runs": runs,
        "summary": _summarise(runs, cfg),
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
        },
    }
    results["seconds_total"] = time.perf_counter() - t_start
    results["cpu_seconds_total"] = time.process_time() - c_start
    with open(os.path.join(cfg.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    report.write_report(results, data, models, cfg)
    results["seconds_total"] = time.perf_counter() - t_start
    results["cpu_seconds_total"] = time.process_time() - c_start
    log(
        f"wrote {os.path.join(cfg.out, 'report.md')} ({results['seconds_total']:.0f} s wall, "
        f"{results['cpu_seconds_total']:.0f} s CPU in all)"
    )
    return results


def _summarise(runs: dict[str, list[dict]], cfg: DemoConfig) -> dict:
    """Mean and sample SD over seeds, and the paired (same-seed) difference SCC minus baseline."""
    out: dict = {}
    names = list(runs)
    for name in names:
        r = runs[name]
        out[name] = {
            "dice": [_summary([x["clean"]["dice"][c] for x in r]) for c in range(4)],
            "mean_fg_dice": _summary([x["clean"]["mean_fg_dice"] for x in r]),
            "ece": _summary([x["clean"]["ece"] for x in r]),
            "ece_brain": _summary([x["clean"]["ece_brain"] for x in r]),
            "robustness": {
                kind: [_summary([x["robustness"][kind][j]["mean_fg_dice"] for x in r]) for j in range(len(levels))]
                for kind, levels in cfg.levels.items()
            },
        }
    base, scc = (runs[n] for n in names)

    def paired(get) -> dict:
        d = [get(b) - get(s) for s, b in zip(base, scc)]
        s = _summary(d)
        s["wins"] = int(sum(v > 0 for v in d))
        return s

    out["difference"] = {
        "dice": [paired(lambda x, c=c: x["clean"]["dice"][c]) for c in range(4)],
        "mean_fg_dice": paired(lambda x: x["clean"]["mean_fg_dice"]),
        "ece": paired(lambda x: x["clean"]["ece"]),
        "ece_brain": paired(lambda x: x["clean"]["ece_brain"]),
        "robustness": {
            kind: [paired(lambda x, kind=kind, j=j: x["robustness"][kind][j]["mean_fg_dice"]) for j in range(len(levels))]
            for kind, levels in cfg.levels.items()
        },
    }
    return out
