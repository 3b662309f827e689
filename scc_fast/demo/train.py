"""Training and evaluation of one (loss, seed) run, 2D slices or 3D patches."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..losses import DiceCESCCLoss
from .data import DemoData, sample_batch_2d, sample_batch_3d
from .metrics import PERTURBATIONS, dice_per_class, expected_calibration_error
from .model import UNet

__all__ = ["TrainConfig", "RunResult", "make_loss", "train_run", "predict_test", "evaluate"]


@dataclass
class TrainConfig:
    dims: int = 2
    steps: int = 350
    batch_size: int = 8
    lr: float = 3e-3
    warmup: int = 20
    channels: tuple[int, ...] = (8, 16, 32, 64)
    eval_every: int = 50
    patch: tuple[int, int, int] = (12, 0, 0)  # 3D only: D x H x W, 0 = the whole slice


@dataclass
class RunResult:
    loss_name: str
    seed: int
    model: torch.nn.Module
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_dice: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_loss(lambda_spectral: float) -> DiceCESCCLoss:
    """Dice + CE (+ lambda * (1 - SCC)) over all four classes, softmax on logits."""
    return DiceCESCCLoss(lambda_spectral=lambda_spectral)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def test_arrays(data: DemoData) -> tuple[torch.Tensor, torch.Tensor]:
    """Test slices: (S x 1 x H x W image, S x H x W labels)."""
    z = data.split.test
    return torch.from_numpy(data.image[z])[:, None], torch.from_numpy(data.labels[z])


@torch.no_grad()
def predict_test(model: torch.nn.Module, data: DemoData, dims: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities S x C x H x W on the test slices (optionally of a perturbed copy ``image``
    of the test slices, S x 1 x H x W).

    3D: each test slab is run as one volume with ``gap`` unlabelled slices of context on each side
    (never used in training) and only the slab itself is kept.
    """
    model.eval()
    if image is None:
        image = test_arrays(data)[0]
    if dims == 2:
        out = torch.cat([torch.softmax(model(image[i : i + 32]), 1) for i in range(0, image.shape[0], 32)])
    else:
        # Map test slice index -> row of ``image``; context slices come from the (clean) volume
        # except where they are test slices themselves.
        z_test = data.split.test
        full = torch.from_numpy(data.image)[:, None].clone()
        full[torch.from_numpy(z_test)] = image
        parts = []
        for a, b in data.split.test_runs():
            lo, hi = max(0, a - data.split.gap), min(full.shape[0], b + data.split.gap)
            vol = full[lo:hi, 0][None, None]  # 1 x 1 x D x H x W
            probs = torch.softmax(model(vol), 1)[0]  # C x D x H x W
            parts.append(probs[:, a - lo : b - lo].movedim(1, 0))
        out = torch.cat(parts)
    model.train()
    return out


def evaluate(model: torch.nn.Module, data: DemoData, dims: int, image: torch.Tensor | None = None) -> dict:
    """Dice per class, mean foreground Dice, ECE over all voxels and over brain voxels."""
    _, labels = test_arrays(data)
    probs = predict_test(model, data, dims, image)
    pred = probs.argmax(1)
    dice = dice_per_class(pred, labels, probs.shape[1])
    return {
        "dice": dice.tolist(),
        "mean_fg_dice": float(np.nanmean(dice[1:])),
        "ece": expected_calibration_error(probs, labels),
        "ece_brain": expected_calibration_error(probs, labels, mask=labels > 0),
    }


def robustness(model: torch.nn.Module, data: DemoData, dims: int, levels: dict[str, list[float]], seed: int = 1234) -> dict:
    """Mean foreground Dice (and per class) under each perturbation and level.

    The perturbation's randomness is seeded by (``seed``, kind, level), so every model sees the
    very same perturbed images.
    """
    clean, _ = test_arrays(data)
    out: dict[str, list[dict]] = {}
    for k, (kind, values) in enumerate(levels.items()):
        fn = PERTURBATIONS[kind][0]
        rows = []
        for j, level in enumerate(values):
            g = torch.Generator().manual_seed(seed + 1000 * k + j)
            res = evaluate(model, data, dims, fn(clean, level, g))
            rows.append({"level": level, "mean_fg_dice": res["mean_fg_dice"], "dice": res["dice"]})
        out[kind] = rows
    return out


def train_run(
    data: DemoData, cfg: TrainConfig, *, loss_name: str, lambda_spectral: float, seed: int,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train one UNet. The seed fixes the initial weights and the whole data stream (slice choice and
    augmentation), which the loss never touches, so two losses with one seed see the same batches."""
    torch.manual_seed(seed)
    model = UNet(cfg.dims, 1, 4, cfg.channels)
    rng = np.random.default_rng(seed)
    loss_fn = make_loss(lambda_spectral)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    res = RunResult(loss_name, seed, model)
    t0 = time.perf_counter()
    running = None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        if cfg.dims == 2:
            x, y = sample_batch_2d(data, rng, cfg.batch_size)
        else:
            x, y = sample_batch_3d(data, rng, cfg.batch_size, cfg.patch)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{loss_name} seed {seed}: loss became {value} at step {step}")
        running = value if running is None else 0.9 * running + 0.1 * value
        res.steps.append(step + 1)
        res.train_loss.append(value)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ev = evaluate(model, data, cfg.dims)
            res.eval_steps.append(step + 1)
            res.eval_dice.append(ev["mean_fg_dice"])
            log(
                f"  [{loss_name:>14s} seed {seed}] step {step + 1:4d}/{cfg.steps}  loss {running:.4f}  "
                f"test Dice {ev['mean_fg_dice']:.4f}  ({time.perf_counter() - t0:.0f} s)"
            )
    res.seconds = time.perf_counter() - t0
    model.eval()
    return res
