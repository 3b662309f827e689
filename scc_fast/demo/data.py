"""Data for the demo: the MNI152 template from nilearn's wheel (or a synthetic phantom), tissue
labels, the slab split and the training augmentation.

Volumes are held as ``Z x H x W`` float32 arrays (axial slices, anterior up, H and W padded to a
multiple of 8), labels as ``Z x H x W`` int64 with 0 background, 1 CSF/other brain, 2 grey
matter, 3 white matter.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLASS_NAMES",
    "DemoData",
    "Split",
    "slab_split",
    "tissue_labels",
    "synthetic_volume",
    "load_mni152",
    "build_data",
    "augment_2d",
    "sample_batch_2d",
    "sample_batch_3d",
]

CLASS_NAMES = ("background", "CSF/other brain", "grey matter", "white matter")
DEMO_EXTRA_HINT = "pip install 'scc_fast[demo]'"


@dataclass
class Split:
    """Slice indices (along Z) of the training and test sets."""

    train: np.ndarray
    test: np.ndarray
    gap: int

    def test_runs(self) -> list[tuple[int, int]]:
        """Contiguous test blocks as ``(start, stop)`` pairs."""
        return _runs(self.test)

    def train_runs(self) -> list[tuple[int, int]]:
        return _runs(self.train)


@dataclass
class DemoData:
    """Image, labels and split. ``image``/``labels``: Z x H x W (numpy)."""

    image: np.ndarray
    labels: np.ndarray
    split: Split
    source: str
    info: dict = field(default_factory=dict)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    idx = np.sort(np.asarray(idx))
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) > 1)[0]
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def slab_split(
    indices: np.ndarray | int, *, slab: int = 8, gap: int = 2, test_every: int = 4, offset: int | None = None
) -> Split:
    """Split slice indices into train and test by contiguous slabs, with a gap between them.

    The slices are cut into consecutive blocks of ``slab`` slices; block ``b`` is a test block
    when ``b % test_every == offset`` (default ``test_every // 2``, so neither end of the range
    is favoured). Slices within ``gap`` of any test slice belong to neither set, so the closest
    train and test slices are ``gap + 1`` apart and no neighbouring slices cross the split.

    Args:
        indices: the slice indices to split (sorted, contiguous), or a count n for ``range(n)``.
        slab: slices per block (>= 1). gap: slices dropped on each side of a test block (>= 1).
        test_every: one block in this many is a test block (>= 2).
    """
    idx = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D array or a positive count, got {indices!r}")
    if slab < 1 or gap < 1 or test_every < 2:
        raise ValueError(f"need slab >= 1, gap >= 1, test_every >= 2; got slab={slab}, gap={gap}, test_every={test_every}")
    offset = test_every // 2 if offset is None else offset
    if not 0 <= offset < test_every:
        raise ValueError(f"offset must be in [0, test_every), got {offset}")
    block = np.arange(idx.size) // slab
    is_test = block % test_every == offset
    test = idx[is_test]
    if test.size == 0:
        raise ValueError(f"no test slab: {idx.size} slices, slab={slab}, test_every={test_every}, offset={offset}")
    dist = np.abs(idx[:, None] - test[None, :]).min(axis=1)
    train = idx[(~is_test) & (dist > gap)]
    if train.size == 0:
        raise ValueError(f"no training slices left: {idx.size} slices, slab={slab}, gap={gap}, test_every={test_every}")
    return Split(train=train, test=test, gap=gap)


def tissue_labels(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Hard tissue labels from probability maps.

    0 outside the brain mask; inside it the most probable of CSF/other (``1 - gm - wm``,
    clipped to [0, 1]) -> 1, grey matter -> 2, white matter -> 3.
    """
    if not (gm.shape == wm.shape == brain.shape):
        raise ValueError(f"gm, wm and brain must have one shape, got {gm.shape}, {wm.shape}, {brain.shape}")
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([other, gm, wm]), axis=0)
    return np.where(brain > 0.5, tissue, 0).astype(np.int64)


def _pad_to(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad the last two axes of Z x H x W to multiples of ``multiple`` (centred)."""
    pads = [(0, 0)]
    for s in arr.shape[1:]:
        extra = (-s) % multiple
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(arr, pads)


def _to_axial(arr: np.ndarray) -> np.ndarray:
    """nibabel X (L-R) x Y (P-A) x Z (I-S) -> Z x H x W with anterior at the top."""
    return np.ascontiguousarray(arr.transpose(2, 1, 0)[:, ::-1, :])


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    """Make any socket connection raise: the demo data must come from the installed wheel."""

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "scc-fast demo: something tried to open a network connection while loading the MNI152 "
            "template; the demo only uses the files bundled in nilearn's wheel and never downloads"
        )

    saved = socket.socket.connect, socket.create_connection
    socket.socket.connect, socket.create_connection = refuse, refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection = saved  # type: ignore[method-assign]


def load_mni152(resolution: int = 2) -> tuple[np.ndarray, np.ndarray, dict]:
    """The MNI152 (ICBM 2009a symmetric) T1 template and tissue labels from nilearn's wheel.

    Returns ``(image, labels, info)``, both Z x H x W, the image scaled to [0, 1] by its 99.5th
    percentile inside the brain. Raises ImportError naming the ``[demo]`` extra without nilearn,
    FileNotFoundError if the bundled files are missing, and RuntimeError if anything tries to use
    the network (nothing is ever downloaded).
    """
    try:
        import nilearn
        from nilearn import datasets
    except ImportError as exc:  # pragma: no cover - exercised only without nilearn
        raise ImportError(f"scc-fast demo needs nilearn for the MNI152 data: {DEMO_EXTRA_HINT}") from exc
    needed = ("load_mni152_template", "load_mni152_gm_template", "load_mni152_wm_template", "load_mni152_brain_mask")
    missing = [n for n in needed if not hasattr(datasets, n)]
    if missing:
        raise ImportError(f"nilearn {nilearn.__version__} lacks {', '.join(missing)}; {DEMO_EXTRA_HINT} (nilearn >= 0.10)")
    for attr in ("MNI152_FILE_PATH", "GM_MNI152_FILE_PATH", "WM_MNI152_FILE_PATH"):
        path = getattr(datasets, attr, None)
        if path is None or not os.path.isfile(str(path)):
            raise FileNotFoundError(f"nilearn's bundled MNI152 file {attr} = {path!r} is missing; reinstall nilearn")
    with _no_network():
        t1 = datasets.load_mni152_template(resolution=resolution).get_fdata(dtype=np.float32)
        gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata(dtype=np.float32)
        wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32)
        brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(dtype=np.float32)
    labels = tissue_labels(gm, wm, brain)
    scale = float(np.percentile(t1[brain > 0.5], 99.5))
    image = np.clip(t1 / scale, 0.0, None).astype(np.float32)
    info = {"nilearn": nilearn.__version__, "resolution_mm": resolution, "shape_xyz": list(t1.shape)}
    return _to_axial(image), _to_axial(labels), info


def synthetic_volume(shape: tuple[int, int, int] = (40, 48, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like phantom Z x H x W: nested ellipsoids (CSF shell, folded grey ring, white core).

    Intensities follow the MNI152 template's class means (0, 0.39, 0.65, 0.84) plus smooth
    texture, so the pipeline can be tested without nilearn. Returns ``(image, labels)``.
    """
    rng = np.random.default_rng(seed)
    z, h, w = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    zz, hh, ww = np.meshgrid(z, h, w, indexing="ij")
    r = np.sqrt((zz / 0.85) ** 2 + (hh / 0.9) ** 2 + (ww / 0.8) ** 2)
    theta, phi = np.arctan2(hh, ww), np.arctan2(zz, np.sqrt(hh**2 + ww**2) + 1e-6)
    folds = 0.06 * np.sin(7 * theta + rng.uniform(0, 2 * np.pi)) * np.cos(5 * phi + rng.uniform(0, 2 * np.pi))
    labels = np.zeros(shape, np.int64)
    labels[r < 0.95] = 1
    labels[r + folds < 0.85] = 2
    labels[r - folds < 0.6] = 3
    means = np.array([0.0, 0.39, 0.65, 0.84], np.float32)
    texture = rng.normal(0, 1, shape).astype(np.float32)
    kernel = np.ones(3, np.float32) / 3
    for axis in range(3):  # cheap smoothing so the texture is not white noise
        texture = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, texture)
    image = means[labels] + 0.04 * texture * (labels > 0)
    return image.astype(np.float32), labels


def build_data(
    source: str = "mni152", *, resolution: int = 2, slab: int = 8, gap: int = 2, test_every: int = 4,
    min_brain_fraction: float = 0.02, synthetic_shape: tuple[int, int, int] = (48, 64, 56),
) -> DemoData:
    """Load the volume, keep axial slices with some brain, pad H and W to multiples of 8, split by slab."""
    if source == "mni152":
        image, labels, info = load_mni152(resolution)
    elif source == "synthetic":
        image, labels = synthetic_volume(synthetic_shape)
        info = {"shape_zhw": list(synthetic_shape)}
    else:
        raise ValueError(f"source must be 'mni152' or 'synthetic', got {source!r}")
    image, labels = _pad_to(image, 8), _pad_to(labels, 8)
    brain_frac = (labels > 0).reshape(labels.shape[0], -1).mean(1)
    keep = np.nonzero(brain_frac >= min_brain_fraction)[0]
    if keep.size == 0:
        raise ValueError("no slice holds enough brain to train on")
    keep = np.arange(keep.min(), keep.max() + 1)  # contiguous, so slabs are real slabs
    split = slab_split(keep, slab=slab, gap=gap, test_every=test_every)
    info.update(
        slices_used=[int(keep[0]), int(keep[-1])], n_train=int(split.train.size), n_test=int(split.test.size),
        slab=slab, gap=gap, test_every=test_every, slice_hw=list(image.shape[1:]),
    )
    return DemoData(image=image, labels=labels, split=split, source=source, info=info)


# --------------------------------------------------------------------------------------------
# Augmentation. Geometric (rotation, scale, shift, left-right flip) and a mild global intensity
# scale/offset only: the test-time perturbations (noise, gamma, bias field) are deliberately NOT
# used in training, so the robustness curves measure generalisation, not augmentation.
# --------------------------------------------------------------------------------------------


def augment_2d(
    images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, *, max_rotate_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.06,
    intensity_scale: tuple[float, float] = (0.9, 1.1), intensity_shift: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (bilinear image, nearest labels), flip and intensity scale. B x 1 x H x W, B x H x W."""
    n = images.shape[0]
    angle = np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg, n))
    scale = rng.uniform(*scale_range, n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    a = rng.uniform(*intensity_scale, n)
    b = rng.uniform(-intensity_shift, intensity_shift, n)
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = np.cos(angle) / scale * flip
    theta[:, 0, 1] = -np.sin(angle) / scale
    theta[:, 1, 0] = np.sin(angle) / scale * flip
    theta[:, 1, 1] = np.cos(angle) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = out * torch.from_numpy(a).float().view(n, 1, 1, 1) + torch.from_numpy(b).float().view(n, 1, 1, 1)
    return out, lab[:, 0].round().long()


def sample_batch_2d(data: DemoData, rng: np.random.Generator, batch_size: int, augment: bool = True):
    """A random batch of training slices: (B x 1 x H x W float, B x H x W long)."""
    z = rng.choice(data.split.train, size=batch_size, replace=batch_size > data.split.train.size)
    x = torch.from_numpy(data.image[z])[:, None]
    y = torch.from_numpy(data.labels[z])
    return augment_2d(x, y, rng) if augment else (x, y)


def sample_batch_3d(
    data: DemoData, rng: np.random.Generator, batch_size: int, patch: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches lying wholly inside one contiguous training run, with left-right flips and a
    mild intensity scale: (B x 1 x D x H x W float, B x D x H x W long).

    A patch H or W of 0 means the whole slice: with instance norm, patches much smaller than the
    slabs predicted at test time would be normalised with different statistics.
    """
    _, h, w = data.image.shape
    pd, ph, pw = patch[0], patch[1] or h, patch[2] or w
    runs = [r for r in data.split.train_runs() if r[1] - r[0] >= pd]
    if not runs:
        raise ValueError(f"no training run holds {pd} contiguous slices; lower the patch depth")
    if ph > h or pw > w:
        raise ValueError(f"patch {patch} is larger than the slice {h} x {w}")
    xs, ys = [], []
    for _ in range(batch_size):
        z0, z1 = runs[rng.integers(len(runs))]
        d0 = rng.integers(z0, z1 - pd + 1)
        h0, w0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        x = data.image[d0 : d0 + pd, h0 : h0 + ph, w0 : w0 + pw]
        y = data.labels[d0 : d0 + pd, h0 : h0 + ph, w0 : w0 + pw]
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
        x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))
