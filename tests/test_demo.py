"""Tests of the ``scc-fast demo`` pipeline on a synthetic volume (nilearn only where marked)."""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from scc_fast.demo import add_parser
from scc_fast.demo.data import (
    _no_network,
    augment_2d,
    build_data,
    sample_batch_2d,
    sample_batch_3d,
    slab_split,
    synthetic_volume,
    tissue_labels,
)
from scc_fast.demo.metrics import bias_field, dice_per_class, expected_calibration_error, gamma_contrast, gaussian_noise
from scc_fast.demo.model import UNet
from scc_fast.demo.train import TrainConfig, evaluate, predict_test, robustness, train_run


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from more threads, and on a loaded CPU extra threads make them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return build_data("synthetic", synthetic_shape=(40, 40, 36))


# ---- data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,slab,gap,every", [(71, 8, 2, 4), (40, 5, 1, 3), (100, 10, 3, 2), (33, 4, 2, 4)])
def test_slab_split_has_no_overlap_or_adjacency(n, slab, gap, every):
    idx = np.arange(10, 10 + n)
    split = slab_split(idx, slab=slab, gap=gap, test_every=every)
    train, test = set(split.train.tolist()), set(split.test.tolist())
    assert train and test and not (train & test)
    assert train | test <= set(idx.tolist())
    # The closest train/test pair is gap + 1 apart: no neighbouring slices across the split.
    dist = np.abs(split.train[:, None] - split.test[None, :]).min()
    assert dist == gap + 1
    # Test slices come in contiguous slabs of `slab` (the last one may be cut by the range end).
    runs = split.test_runs()
    assert all(b - a == slab for a, b in runs[:-1]) and 0 < runs[-1][1] - runs[-1][0] <= slab
    # Every slice not in either set lies within `gap` of a test slice (nothing else is wasted).
    dropped = np.array(sorted(set(idx.tolist()) - train - test))
    if dropped.size:
        assert np.abs(dropped[:, None] - split.test[None, :]).min(axis=1).max() <= gap


def test_slab_split_errors():
    with pytest.raises(ValueError, match="gap"):
        slab_split(40, gap=0)
    with pytest.raises(ValueError, match="no test slab"):
        slab_split(8, slab=8, test_every=4)  # one block, offset 2: nothing to test on
    with pytest.raises(ValueError, match="no training"):
        slab_split(8, slab=4, gap=4, test_every=2, offset=0)


def test_tissue_labels():
    gm = np.array([0.1, 0.7, 0.2, 0.3, 0.9])
    wm = np.array([0.1, 0.2, 0.7, 0.3, 0.0])
    brain = np.array([1, 1, 1, 1, 0])
    # other = 1 - gm - wm = [0.8, 0.1, 0.1, 0.4, .]; the last voxel is outside the brain.
    assert tissue_labels(gm, wm, brain).tolist() == [1, 2, 3, 1, 0]
    with pytest.raises(ValueError, match="one shape"):
        tissue_labels(gm, wm[:3], brain)


def test_synthetic_data(data):
    image, labels = synthetic_volume((24, 32, 28), seed=3)
    assert image.shape == labels.shape == (24, 32, 28) and image.dtype == np.float32
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    means = [image[labels == c].mean() for c in range(4)]
    assert means == sorted(means)  # background < CSF < grey < white, as in a T1 image
    assert data.image.shape[1] % 8 == 0 and data.image.shape[2] % 8 == 0
    assert data.image.shape == data.labels.shape
    # Test slices are all in the kept range and hold brain.
    assert (data.labels[data.split.test] > 0).any()


def test_augment_2d_is_reproducible_and_keeps_labels(data):
    x = torch.from_numpy(data.image[data.split.train[:4]])[:, None]
    y = torch.from_numpy(data.labels[data.split.train[:4]])
    a1, l1 = augment_2d(x, y, np.random.default_rng(5))
    a2, l2 = augment_2d(x, y, np.random.default_rng(5))
    assert torch.equal(a1, a2) and torch.equal(l1, l2)
    assert a1.shape == x.shape and l1.shape == y.shape and l1.dtype == torch.long
    assert set(torch.unique(l1).tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(a1, x)  # it did something
    # Nearest-neighbour labels: the class fractions move a little, not a lot.
    for c in (1, 2, 3):
        assert abs((l1 == c).float().mean() - (y == c).float().mean()) < 0.05


def test_same_seed_same_batches(data):
    b1 = [sample_batch_2d(data, np.random.default_rng(9), 3) for _ in range(2)]
    assert torch.equal(b1[0][0], b1[1][0]) and torch.equal(b1[0][1], b1[1][1])


def test_sample_batch_3d_stays_in_training_runs(data):
    rng = np.random.default_rng(0)
    x, y = sample_batch_3d(data, rng, 3, (6, 16, 16))
    assert x.shape == (3, 1, 6, 16, 16) and y.shape == (3, 6, 16, 16)
    x, _ = sample_batch_3d(data, rng, 1, (6, 0, 0))  # 0: the whole slice
    assert x.shape == (1, 1, 6) + data.image.shape[1:]
    with pytest.raises(ValueError, match="contiguous"):
        sample_batch_3d(data, rng, 1, (data.image.shape[0] + 1, 8, 8))


def test_no_network_guard():
    saved = socket.create_connection
    with _no_network():
        with pytest.raises(RuntimeError, match="never downloads"):
            socket.create_connection(("127.0.0.1", 9))
        with pytest.raises(RuntimeError, match="never downloads"):
            socket.socket().connect(("127.0.0.1", 9))
    assert socket.create_connection is saved


def test_mni152_from_nilearn_wheel():
    pytest.importorskip("nilearn")
    from scc_fast.demo.data import load_mni152

    image, labels, info = load_mni152(resolution=2)
    assert image.shape == labels.shape == (95, 117, 99)  # Z x H x W of the 2 mm template
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    means = [image[labels == c].mean() for c in range(4)]
    assert means == sorted(means)
    d = build_data("mni152")
    assert d.split.test.size >= 8 and d.split.train.size >= 3 * d.split.test.size // 2


def test_load_mni152_without_nilearn_names_the_extra(monkeypatch):
    from scc_fast.demo import data as demo_data

    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(ImportError, match=r"pip install 'scc_fast\[demo\]'"):
        demo_data.load_mni152()


def test_import_does_not_need_nilearn_or_matplotlib():
    code = "import sys, scc_fast.demo, scc_fast.demo.run; print('nilearn' in sys.modules, 'matplotlib' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---- model and metrics --------------------------------------------------------------------


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 37, 50)), (2, (1, 1, 64, 64)), (3, (1, 1, 7, 20, 13))])
def test_unet_output_shape(dims, shape):
    channels = (4, 8, 16, 32) if dims == 2 else (4, 8, 16)
    net = UNet(dims, 1, 4, channels)
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 4) + shape[2:]
    with pytest.raises(ValueError, match="dims"):
        net(torch.randn(shape[0], *shape[2:]))
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        UNet(4)


def test_dice_per_class():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 2, 2, 2, 1])
    d = dice_per_class(pred, target, 4)
    assert d[0] == 1.0 and d[1] == pytest.approx(2 * 1 / 4) and d[2] == pytest.approx(2 * 2 / 6) and math.isnan(d[3])


def test_ece_known_values():
    # 10 voxels at confidence 0.8, 8 correct: perfectly calibrated.
    probs = torch.tensor([[0.8, 0.2]] * 10).T.reshape(1, 2, 10)
    target = torch.tensor([[0] * 8 + [1] * 2])
    assert expected_calibration_error(probs, target) == pytest.approx(0.0, abs=1e-6)  # float32 0.8
    # Confidence 1 and half right: ECE 0.5.
    probs = torch.tensor([[1.0, 0.0]] * 4).T.reshape(1, 2, 4)
    assert expected_calibration_error(probs, torch.tensor([[0, 0, 1, 1]])) == pytest.approx(0.5)
    # Two bins: 2 voxels at 0.9 both right (gap 0.1), 2 voxels at 0.6 none right (gap 0.6): (2*0.1 + 2*0.6)/4.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]).T.reshape(1, 2, 4)
    target = torch.tensor([[0, 0, 1, 1]])
    assert expected_calibration_error(probs, target) == pytest.approx(0.35)
    # The mask keeps only the first two voxels: ECE 0.1.
    mask = torch.tensor([[True, True, False, False]])
    assert expected_calibration_error(probs, target, mask=mask) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="N x C"):
        expected_calibration_error(probs[0], target)


def test_perturbations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    assert torch.equal(gaussian_noise(x, 0.0), x) and torch.equal(bias_field(x, 0.0), x)
    noisy = gaussian_noise(x, 0.2, g)
    assert (noisy - x).std().item() == pytest.approx(0.2, rel=0.03)
    assert abs((noisy - x).mean().item()) < 0.01
    assert torch.allclose(gamma_contrast(x, 1.0), x)
    assert torch.allclose(gamma_contrast(x, 2.0), x**2)
    assert torch.equal(gamma_contrast(torch.tensor([-0.5, 0.25]), 0.5), torch.tensor([0.0, 0.5]))
    biased = bias_field(x, 0.5, g)
    log_ratio = torch.log(biased / x)
    # Bounded by the strength, reaches it (max |f| = 1), differs per image, and is smooth.
    assert log_ratio.abs().amax().item() == pytest.approx(0.5, rel=1e-4)
    assert not torch.allclose(log_ratio[0], log_ratio[1])
    assert (log_ratio[..., 1:] - log_ratio[..., :-1]).abs().max() < 0.1
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(x, -1)
    with pytest.raises(ValueError, match="gamma"):
        gamma_contrast(x, 0)
    with pytest.raises(ValueError, match="strength"):
        bias_field(x, -0.1)


# ---- training ------------------------------------------------------------------------------


def test_training_reduces_the_loss_and_is_reproducible(data):
    cfg = TrainConfig(dims=2, steps=24, batch_size=4, lr=5e-3, warmup=2, channels=(4, 8, 16), eval_every=24)
    res = train_run(data, cfg, loss_name="Dice+CE+SCC", lambda_spectral=0.5, seed=0, log=lambda s: None)
    loss = np.array(res.train_loss)
    assert np.isfinite(loss).all() and loss[-6:].mean() < 0.9 * loss[:6].mean()
    again = train_run(data, cfg, loss_name="Dice+CE+SCC", lambda_spectral=0.5, seed=0, log=lambda s: None)
    assert np.allclose(again.train_loss, res.train_loss, rtol=1e-5)
    ev = evaluate(res.model, data, 2)
    assert len(ev["dice"]) == 4 and 0 <= ev["mean_fg_dice"] <= 1 and 0 <= ev["ece"] <= 1
    rob = robustness(res.model, data, 2, {"noise": [0.0, 0.3], "gamma": [1.0], "bias": [0.0]})
    # Level 0 / gamma 1 reproduce the clean evaluation exactly.
    assert rob["noise"][0]["mean_fg_dice"] == rob["gamma"][0]["mean_fg_dice"] == rob["bias"][0]["mean_fg_dice"]
    assert rob["noise"][0]["mean_fg_dice"] == pytest.approx(ev["mean_fg_dice"])


def test_train_3d_step_and_slab_prediction(data):
    cfg = TrainConfig(dims=3, steps=3, batch_size=1, channels=(4, 8), eval_every=3, patch=(6, 16, 16))
    res = train_run(data, cfg, loss_name="Dice+CE", lambda_spectral=0.0, seed=1, log=lambda s: None)
    probs = predict_test(res.model, data, 3)
    assert probs.shape == (data.split.test.size, 4) + data.image.shape[1:]
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)


def test_cli_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    from scc_fast.demo import main

    out = tmp_path / "demo"
    args = ["--data", "synthetic", "--quick", "--seeds", "2", "--steps", "3", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    names = set(os.listdir(out))
    assert {"report.md", "results.json", "learning_curves.png", "robustness.png", "examples.png"} <= names
    text = (out / "report.md").read_text()
    assert "| Dice+CE |" in text and "| SCC − base |" in text and "--steps 3" in text


def test_3d_demo_end_to_end(tmp_path):
    """The --3d path through run_demo and the report, made small (channels, levels) to stay fast."""
    pytest.importorskip("matplotlib")
    from scc_fast.demo.run import DemoConfig, run_demo

    cfg = DemoConfig.make(quick=True, dims=3, seeds=2, steps=2, source="synthetic", out=str(tmp_path / "d3"))
    cfg.train.channels = (4, 8)
    cfg.levels = {"noise": [0.0, 0.2], "gamma": [0.5, 1.0], "bias": [0.0, 0.5]}
    results = run_demo(cfg, log=lambda s: None)
    assert results["config"]["dims"] == 3 and len(results["runs"]["Dice+CE+SCC"]) == 2
    text = (tmp_path / "d3" / "report.md").read_text()
    assert "3D UNet" in text and "| SCC − base |" in text


def test_add_parser_sets_func():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--quick", "--3d", "--out", "x"])
    assert callable(args.func) and args.quick and args.three_d and args.out == "x"
