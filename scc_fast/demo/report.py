"""Markdown report and PNG figures of a demo run (matplotlib, Agg backend, small files)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..benchmark.errors import MissingExtraError
from .data import CLASS_NAMES, DEMO_EXTRA_HINT
from .metrics import PERTURBATIONS

__all__ = ["require_matplotlib", "write_report"]

_COLORS = {"Dice+CE": "#1f77b4", "Dice+CE+SCC": "#d62728"}
_LABEL_COLORS = ["#000000", "#3b8ee0", "#e8a33a", "#f4f1de"]


def require_matplotlib():
    """``matplotlib.pyplot`` on the Agg backend; without matplotlib a :class:`MissingExtraError`
    (an ImportError that ``scc-fast demo`` prints as one line) naming the ``[demo]`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        why = "is not installed" if (exc.name or "").split(".")[0] == "matplotlib" else f"cannot be imported ({exc})"
        raise MissingExtraError(f"matplotlib {why} (the demo's figures need it); {DEMO_EXTRA_HINT}") from exc
    return plt


def _pm(s: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['sd']:.{digits}f}"


def _diff(s: dict, n: int, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * s['mean']:+.{digits}f} ± {scale * s['sd']:.{digits}f} ({s['wins']}/{n})"


def _learning_curves(plt, results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for name, runs in results["runs"].items():
        losses = np.array([r["curve"]["train_loss"] for r in runs])
        steps = np.array(runs[0]["curve"]["steps"])
        k = max(1, len(steps) // 40)  # moving average for readability
        kernel = np.ones(k) / k
        smooth = np.array([np.convolve(l, kernel, mode="valid") for l in losses])
        axes[0].plot(steps[k - 1 :], smooth.mean(0), color=_COLORS[name], label=name)
        dice = np.array([r["curve"]["eval_dice"] for r in runs])
        es = runs[0]["curve"]["eval_steps"]
        axes[1].plot(es, dice.mean(0), "o-", ms=3, color=_COLORS[name], label=name)
        axes[1].fill_between(es, dice.min(0), dice.max(0), color=_COLORS[name], alpha=0.2, lw=0)
    axes[0].set(xlabel="step", ylabel="training loss (own objective)", yscale="log", title="training loss, mean of seeds")
    axes[1].set(xlabel="step", ylabel="test mean foreground Dice", title="test Dice (band: min-max of seeds)")
    axes[1].set_ylim(max(0.0, axes[1].get_ylim()[0]), 1.0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _robustness(plt, results: dict, path: str) -> None:
    levels = results["config"]["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(3.3 * len(levels), 3), sharey=True)
    for ax, (kind, values) in zip(np.atleast_1d(axes), levels.items()):
        for name in results["runs"]:
            rows = results["summary"][name]["robustness"][kind]
            m = np.array([r["mean"] for r in rows])
            s = np.array([r["sd"] for r in rows])
            ax.plot(values, m, "o-", ms=3, color=_COLORS[name], label=name)
            ax.fill_between(values, m - s, m + s, color=_COLORS[name], alpha=0.2, lw=0)
        ax.set(xlabel=PERTURBATIONS[kind][1], title=kind)
        if kind == "gamma":
            ax.set_xscale("log")
            ax.set_xticks(values)
            ax.set_xticklabels([f"{v:g}" for v in values])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("test mean foreground Dice")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _examples(plt, results: dict, data, models: dict, cfg, path: str) -> None:
    from matplotlib.colors import ListedColormap

    from .train import predict_test, test_arrays

    image, labels = test_arrays(data)
    # The test slice with the most brain, shown clean and at the strongest noise level.
    s = int((labels > 0).flatten(1).sum(1).argmax())
    sigma = cfg.levels["noise"][-2] if len(cfg.levels["noise"]) > 2 else cfg.levels["noise"][-1]
    noisy = image + sigma * torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    cmap = ListedColormap(_LABEL_COLORS)
    names = list(models)
    fig, axes = plt.subplots(2, 2 + len(names), figsize=(2.1 * (2 + len(names)), 4.6))
    for row, (title, img) in enumerate((("clean", image), (f"noise sigma={sigma:g}", noisy))):
        axes[row, 0].imshow(img[s, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"T1 ({title})", fontsize=8)
        axes[row, 1].imshow(labels[s].numpy(), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        axes[row, 1].set_title("ground truth", fontsize=8)
        for col, name in enumerate(names):
            pred = predict_test(models[name][0], data, cfg.dims, img).argmax(1)
            axes[row, 2 + col].imshow(pred[s].numpy(), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            axes[row, 2 + col].set_title(f"{name} (seed {cfg.seeds[0]})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def write_report(results: dict, data, models: dict, cfg) -> str:
    """Write report.md, learning_curves.png, robustness.png, examples.png into ``cfg.out``."""
    plt = require_matplotlib()
    out = cfg.out
    _learning_curves(plt, results, os.path.join(out, "learning_curves.png"))
    _robustness(plt, results, os.path.join(out, "robustness.png"))
    _examples(plt, results, data, models, cfg, os.path.join(out, "examples.png"))

    summ, diff = results["summary"], results["summary"]["difference"]
    names = list(results["runs"])
    n = len(cfg.seeds)
    info = results["data"]
    tc = results["config"]["train"]
    lines = [
        f"# scc-fast demo: Dice+CE against Dice+CE+SCC ({cfg.dims}D{', --quick' if cfg.quick else ''})",
        "",
        f"Command: `{cfg.command}`" if cfg.command else "",
        "",
        "## Setup",
        "",
        (
            f"* Data: {'MNI152 ICBM 2009a symmetric T1 template and its grey/white-matter probability maps and brain mask, from nilearn ' + str(info.get('nilearn')) + ' (bundled in its wheel, nothing downloaded)' if data.source == 'mni152' else 'synthetic brain-like phantom (no nilearn)'}"
            + (f", {info['resolution_mm']} mm." if data.source == "mni152" else ".")
        ),
        (
            "* Labels: 0 background (outside the brain mask), 1 CSF/other brain, 2 grey matter, 3 white matter: inside the"
            " mask the most probable of (1 - GM - WM, GM, WM)."
            if data.source == "mni152"
            else "* Labels: 0 background, 1 CSF-like shell, 2 folded grey ring, 3 white core (nested ellipsoids)."
        ),
        f"* Split: axial slices {info['slices_used'][0]}..{info['slices_used'][1]} cut into slabs of {info['slab']};"
        f" one slab in {info['test_every']} is test, and {info['gap']} slices each side of a test slab are used by neither"
        f" set (closest train/test slices are {info['gap'] + 1} apart): {info['n_train']} train, {info['n_test']} test slices"
        f" of {info['slice_hw'][0]} x {info['slice_hw'][1]}.",
        (
            "* One subject: the training set is one brain, so training augments it with random rotation (±15°), scale"
            " (0.9-1.1), shift (±6%), left-right flip and a mild intensity scale/offset (0.9-1.1, ±0.05)."
            if cfg.dims == 2
            else "* One subject: the training set is one brain (augmentation below)."
        )
        + " Noise, gamma and bias field are **not** used in training; they are the test-time perturbations below.",
        (
            f"* Model: 2D UNet, channels {tuple(tc['channels'])}, instance norm; Adam lr {tc['lr']} (warm-up, cosine), "
            f"{tc['steps']} steps of batch {tc['batch_size']}."
            if cfg.dims == 2
            else f"* Model: 3D UNet, channels {tuple(tc['channels'])}, instance norm; patches of"
            f" {tc['patch'][0]} x {tc['patch'][1] or info['slice_hw'][0]} x {tc['patch'][2] or info['slice_hw'][1]} voxels"
            f" lying wholly inside the training slices (left-right flip, intensity scale 0.9-1.1, offset ±0.05; no rotation),"
            f" {tc['steps']} steps of batch {tc['batch_size']}; each test slab is predicted with"
            f" {info['gap']} unlabelled context slices on each side (never trained on)."
        ),
        f"* Losses: `DiceCESCCLoss(lambda_spectral=0)` (Dice + CE) and `DiceCESCCLoss(lambda_spectral={cfg.lambda_spectral})`"
        " (Dice + CE + lambda (1 - SCC)); softmax, all four classes. Seeds "
        f"{', '.join(map(str, cfg.seeds))}: a seed fixes the initial weights and the whole batch/augmentation stream, so the"
        " two losses see identical data in identical order.",
        "* Metrics on the test slices, as one volume: Dice per class; ECE (top-label, 15 bins) over all voxels and"
        " over brain voxels. Values are mean ± sample SD over seeds, in %. 'SCC − base' is the paired per-seed"
        " difference; (k/n) counts the seeds where Dice+CE+SCC is higher.",
        "",
        "## Test Dice (%)",
        "",
        "| loss | " + " | ".join(CLASS_NAMES[1:]) + " | mean foreground |",
        "|---|" + "---|" * 4,
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_pm(summ[name]["dice"][c]) for c in (1, 2, 3)) + f" | {_pm(summ[name]['mean_fg_dice'])} |")
    lines.append("| SCC − base | " + " | ".join(_diff(diff["dice"][c], n) for c in (1, 2, 3)) + f" | {_diff(diff['mean_fg_dice'], n)} |")
    lines += [
        "",
        "## Calibration: ECE (%) (lower is better)",
        "",
        "| loss | all voxels | brain voxels |",
        "|---|---|---|",
    ]
    for name in names:
        lines.append(f"| {name} | {_pm(summ[name]['ece'])} | {_pm(summ[name]['ece_brain'])} |")
    lines.append(f"| SCC − base | {_diff(diff['ece'], n)} | {_diff(diff['ece_brain'], n)} |")
    lines += ["", "(For ECE, (k/n) counts seeds where SCC's ECE is *higher*, i.e. worse.)", ""]
    lines += ["## Robustness: mean foreground test Dice (%) under test-time perturbations", ""]
    for kind, values in cfg.levels.items():
        lines.append(f"**{kind}** ({PERTURBATIONS[kind][1]})")
        lines.append("")
        lines.append("| level | " + " | ".join(names) + " | SCC − base |")
        lines.append("|---|" + "---|" * (len(names) + 1))
        for j, v in enumerate(values):
            lines.append(
                f"| {v:g} | " + " | ".join(_pm(summ[name]["robustness"][kind][j]) for name in names)
                + f" | {_diff(diff['robustness'][kind][j], n)} |"
            )
        lines.append("")
    lines += [
        "## Figures",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![Dice against perturbation strength](robustness.png)",
        "",
        "![example predictions](examples.png)",
        "",
        "Example: the test slice with the most brain, clean (top) and with Gaussian noise (bottom); colours: "
        "black background, blue CSF/other, orange grey matter, cream white matter.",
        "",
        "## Reading it",
        "",
        _verdict(results, n),
        "",
        f"Training and evaluation took {results['seconds_total']:.0f} s wall clock ({results['cpu_seconds_total']:.0f} s CPU)"
        f" on {results['environment']['cpu_count']} CPU(s), torch "
        f"{results['environment']['torch']} with {results['environment']['threads']} thread(s); raw numbers in `results.json`.",
        "",
    ]
    text = "\n".join(lines)
    path = os.path.join(out, "report.md")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def _verdict(results: dict, n: int) -> str:
    """A plain statement of what the numbers show, without over-claiming."""
    d = results["summary"]["difference"]["mean_fg_dice"]
    mean, sd = 100 * d["mean"], 100 * d["sd"]
    se = sd / np.sqrt(n) if n > 1 else float("inf")
    clear = n >= 3 and abs(mean) > 2 * se and d["wins"] in (0, n)
    per_class = results["summary"]["difference"]["dice"][1:]
    top = int(np.argmax([abs(c["mean"]) for c in per_class]))
    noise = results["summary"]["difference"]["robustness"]["noise"]
    worst = noise[-1]
    parts = [
        f"On clean test slices, adding the SCC term changed mean foreground Dice by {mean:+.2f} points "
        f"(paired SD {sd:.2f} over {n} seeds, higher in {d['wins']}/{n})",
        "; the difference is consistent across seeds and larger than twice its standard error." if clear
        else (
            f"; {n} seed(s) are too few to call a difference either way." if n < 3
            else "; with this many seeds that is within the run-to-run spread, so it is not evidence either way."
        ),
        (
            f" Most of it comes from {CLASS_NAMES[1 + top]} ({100 * per_class[top]['mean']:+.2f} points): a change that"
            " large in one class often means one loss had not learned that class yet, so check the learning curves"
            " before reading it as a property of the loss."
            if abs(per_class[top]["mean"]) > 0.05
            else ""
        ),
        f" At the strongest noise level ({results['config']['levels']['noise'][-1]:g}) the paired difference is "
        f"{100 * worst['mean']:+.2f} ± {100 * worst['sd']:.2f} points ({worst['wins']}/{n} seeds higher).",
        " This is one template brain, a small model and short training: treat it as a sanity check of the claim,"
        " not a replication of the paper's benchmarks.",
    ]
    return "".join(parts)
