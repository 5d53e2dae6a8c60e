"""Scene statistics of CaFFe-layout folders: how much a synthetic set looks like real SAR.

Used by ``experiments/synthetic_vs_real.py`` (the table in docs/data.md) and by the tests of the
synthetic generator. Everything works on any CaFFe ``data_raw/`` folder (real or synthetic):

* per-class grey-value histograms of the SAR image (NA, rock, glacier, ocean + melange);
* texture statistics per class, independent of the brightness: local gradient energy relative
  to the local mean, local coefficient of variation, and the coherence of the structure tensor
  (close to 1 for stripes running one way, e.g. flow bands; close to 0 for isotropic speckle);
* class area fractions;
* front length (pixels of the 1-pixel front) and tortuosity (length / end-to-end distance of
  the longest front piece);
* a texture-only glacier-vs-rock classifier (logistic regression on the texture features, no
  grey value), trained on half of the images and scored on the other half.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ssl4sar_jax.data import caffe_files, synthetic

CLASS_NAMES = ("NA", "rock", "glacier", "ocean")
TEXTURE_FEATURES = ("gradient_energy", "coeff_variation", "coherence", "dissimilarity")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One labelled image: uint8 SAR, class ids and the 1-pixel front, all ``[H, W]``."""

    stem: str
    glacier: str
    sar: np.ndarray
    zones: np.ndarray
    front: np.ndarray


def load_scenes(
    data_raw: Path | str, splits: Sequence[str] = ("train", "test"), max_images: int = 0
) -> list[Scene]:
    """Reads the images of a CaFFe ``data_raw/`` folder (validated by the project's parser).

    Args:
        data_raw: the folder holding ``sar_images/``, ``zones/``, ``fronts/``, ``bounding_boxes/``.
        splits: which split folders to read.
        max_images: > 0 reads at most this many per split (evenly spaced, so every glacier shows).

    Returns:
        The scenes, in file-name order per split.
    """
    root = caffe_files.resolve_data_raw(Path(data_raw))
    scenes = []
    for split in splits:
        paths = sorted((root / "sar_images" / split).glob("*.png"))
        if max_images > 0 and len(paths) > max_images:
            paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).astype(int)]
        for path in paths:
            # Read directly (not through the split-membership check of the CaFFe parser), so
            # any glacier in any split folder is accepted.
            stem = path.name[: -len(".png")]
            zones_path = root / "zones" / split / (stem + caffe_files.ZONES_SUFFIX)
            front_path = root / "fronts" / split / (stem + caffe_files.FRONT_SUFFIX)
            for need in (zones_path, front_path):
                if not need.is_file():
                    raise FileNotFoundError(f"{need}: missing label file for {path}")
            sar = caffe_files.read_gray_png(path.read_bytes(), str(path))
            zones = caffe_files.zones_png_to_ids(
                caffe_files.read_gray_png(zones_path.read_bytes(), str(zones_path))
            )
            front = caffe_files.read_gray_png(front_path.read_bytes(), str(front_path)) > 0
            if sar.shape != zones.shape or sar.shape != front.shape:
                raise ValueError(
                    f"{path}: SAR {sar.shape}, zones {zones.shape} and front {front.shape} differ"
                )
            if (zones > 3).any():
                raise ValueError(f"{zones_path}: zone values outside {{0, 64, 127, 254}}")
            scenes.append(Scene(stem, stem.split("_")[0], sar, zones, front.astype(np.uint8)))
    if not scenes:
        raise FileNotFoundError(f"{root}: no SAR images under sar_images/{{{','.join(splits)}}}/")
    return scenes


def texture_features(sar: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Brightness-independent local texture features of a SAR image.

    Args:
        sar: uint8 or float ``[H, W]``.
        sigma: Gaussian window (px) of the local statistics.

    Returns:
        float32 ``[H, W, 4]``: gradient energy / mean², coefficient of variation, structure-tensor
        coherence, mean absolute neighbour difference / mean (`TEXTURE_FEATURES`).
    """
    x = sar.astype(np.float64)
    mean = ndimage.gaussian_filter(x, sigma) + 1.0
    var = np.maximum(ndimage.gaussian_filter(x * x, sigma) - (mean - 1.0) ** 2, 0.0)
    gx, gy = ndimage.sobel(x, axis=1) / 8.0, ndimage.sobel(x, axis=0) / 8.0
    jxx = ndimage.gaussian_filter(gx * gx, sigma)
    jyy = ndimage.gaussian_filter(gy * gy, sigma)
    jxy = ndimage.gaussian_filter(gx * gy, sigma)
    energy = (jxx + jyy) / mean**2
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)
    diff = np.zeros_like(x)
    diff[:, :-1] += np.abs(np.diff(x, axis=1))
    diff[:-1, :] += np.abs(np.diff(x, axis=0))
    dissimilarity = ndimage.gaussian_filter(diff / 2.0, sigma) / mean
    feats = [np.log1p(energy * 100), np.sqrt(var) / mean, coherence, dissimilarity]
    return np.stack(feats, axis=-1).astype(np.float32)


def _interior(zones: np.ndarray, cls: int, margin: int) -> np.ndarray:
    mask = zones == cls
    return ndimage.binary_erosion(mask, iterations=margin) if margin > 0 else mask


def zone_front(zones: np.ndarray) -> np.ndarray:
    """The glacier/ocean boundary of a zone map: glacier pixels with a 4-neighbour ocean pixel.

    Measured on both real and synthetic labels, so front length and tortuosity do not depend on
    how thick a data set draws its front lines.
    """
    return synthetic.front_line(zones)


def front_geometry(front: np.ndarray) -> tuple[float, float]:
    """Length (front pixels) and tortuosity (length / end-to-end distance) of the longest piece.

    Returns:
        ``(length_px, tortuosity)``; ``(0, nan)`` without a front.
    """
    labels, n = ndimage.label(front > 0, structure=np.ones((3, 3)))
    if n == 0:
        return 0.0, float("nan")
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    pts = np.stack([ys, xs], axis=1).astype(np.float64)
    # End-to-end distance: the farthest pair, found by two farthest-point sweeps.
    a = pts[np.argmax(((pts - pts[0]) ** 2).sum(1))]
    d = np.sqrt(((pts - a) ** 2).sum(1))
    chord = float(d.max())
    return float(len(pts)), float(len(pts) / max(chord, 1.0))


def scene_statistics(scenes: Sequence[Scene], margin: int = 3, bins: int = 32) -> dict:
    """Per-class histograms/texture, class fractions and front geometry of a set of scenes.

    Args:
        scenes: the images.
        margin: pixels eroded from each class region before its texture is measured (so class
            boundaries do not count as texture).
        bins: grey-value histogram bins over 0..255.

    Returns:
        A dict with ``hist [4, bins]`` (normalised per class), ``mean``/``std`` per class,
        ``texture`` ``{class: {feature: median}}``, ``fraction [4]``, ``front_length`` /
        ``front_length_rel`` (per image side) / ``tortuosity`` (medians), ``na_zero`` (fraction of
        NA pixels whose grey value is 0) and ``count``.
    """
    hist = np.zeros((4, bins))
    sums = np.zeros((4, 3))
    frac = np.zeros(4)
    tex: list[list[np.ndarray]] = [[] for _ in range(4)]
    lengths, rel, tort = [], [], []
    na_total = na_zero = 0
    for s in scenes:
        feats = texture_features(s.sar)
        for c in range(4):
            m = s.zones == c
            v = s.sar[m].astype(np.float64)
            hist[c] += np.histogram(v, bins=bins, range=(0, 256))[0]
            sums[c] += (len(v), v.sum(), (v * v).sum())
            frac[c] += m.mean()
            inner = _interior(s.zones, c, margin)
            if inner.sum() > 20:
                tex[c].append(np.median(feats[inner], axis=0))
        na_total += int((s.zones == 0).sum())
        na_zero += int(((s.zones == 0) & (s.sar == 0)).sum())
        length, tortuosity = front_geometry(zone_front(s.zones))
        if length > 0:
            lengths.append(length)
            rel.append(length / max(s.sar.shape))
            tort.append(tortuosity)
    hist = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    n = np.maximum(sums[:, 0], 1)
    mean = sums[:, 1] / n
    std = np.sqrt(np.maximum(sums[:, 2] / n - mean**2, 0))
    texture = {
        CLASS_NAMES[c]: (
            dict(zip(TEXTURE_FEATURES, np.median(np.stack(tex[c]), 0).tolist(), strict=True))
            if tex[c]
            else {}
        )
        for c in range(4)
    }
    return dict(
        count=len(scenes),
        hist=hist,
        mean=mean,
        std=std,
        texture=texture,
        fraction=frac / max(len(scenes), 1),
        front_length=float(np.median(lengths)) if lengths else float("nan"),
        front_length_rel=float(np.median(rel)) if rel else float("nan"),
        tortuosity=float(np.median(tort)) if tort else float("nan"),
        na_zero=na_zero / na_total if na_total else float("nan"),
    )


def histogram_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Histogram intersection per row (1 = identical distributions, 0 = disjoint)."""
    return np.minimum(a, b).sum(axis=-1)


# ----------------------------------------------------------------------------------------------
# Texture-only classifier (numpy logistic regression; no scikit-learn dependency)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogisticModel:
    """Standardised-feature logistic regression: ``p = sigmoid(((x - mu) / sd) @ w + b)``."""

    mu: np.ndarray
    sd: np.ndarray
    w: np.ndarray
    b: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mu) / self.sd) @ self.w + self.b
        return (z > 0).astype(np.int64)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 25) -> LogisticModel:
    """Fits a binary logistic regression by Newton's method.

    Args:
        x: ``[N, F]`` features.
        y: ``[N]`` labels in {0, 1}.
        l2: ridge penalty on the weights.
        iters: Newton iterations.
    """
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], axis=1)
    theta = np.zeros(z.shape[1])
    reg = l2 * np.eye(z.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ theta, -30, 30)))
        grad = z.T @ (p - y) / len(y) + reg @ theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + reg
        theta -= np.linalg.solve(hess + 1e-9 * np.eye(len(theta)), grad)
    return LogisticModel(mu, sd, theta[:-1], float(theta[-1]))


def texture_samples(
    scenes: Sequence[Scene], rng: np.random.Generator, per_class: int = 300, margin: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced glacier (1) / rock (0) pixel samples of texture features, per image.

    Returns:
        ``(features [N, 4], labels [N])``.
    """
    xs, ys = [], []
    for s in scenes:
        feats = texture_features(s.sar)
        for label, cls in ((0, 1), (1, 2)):
            idx = np.flatnonzero(_interior(s.zones, cls, margin))
            if len(idx) < 10:
                continue
            take = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
            xs.append(feats.reshape(-1, feats.shape[-1])[take])
            ys.append(np.full(len(take), label))
    if not xs:
        raise ValueError("no image has both glacier and rock pixels away from class boundaries")
    return np.concatenate(xs), np.concatenate(ys)


def texture_classifier_accuracy(scenes: Sequence[Scene], seed: int = 0) -> float:
    """Balanced accuracy of a texture-only glacier-vs-rock classifier on held-out images.

    The classifier is trained on every other image and scored on the rest (so a glacier's own
    image never serves both). Chance is 0.5.
    """
    rng = np.random.default_rng(seed)
    train, test = list(scenes[0::2]), list(scenes[1::2])
    if not train or not test:
        raise ValueError(f"need at least 2 scenes, got {len(scenes)}")
    model = fit_logistic(*texture_samples(train, rng))
    x, y = texture_samples(test, rng)
    pred = model.predict(x)
    return float(0.5 * ((pred[y == 1] == 1).mean() + (pred[y == 0] == 0).mean()))
