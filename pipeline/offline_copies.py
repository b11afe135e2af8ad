"""Offline augmentation: K augmented copies of the training split, materialised once by ``prepare``.

With ``augment.mode: offline`` the training stages do not draw fresh random ops every batch; epoch
``e`` trains on copy ``e mod K`` instead. The copies are deterministic (copy ``k`` is drawn from a
generator seeded with ``(seed, k)``), written atomically and cached by DVC like any other output, and a
frozen teacher's logits are computed once per copy rather than once per batch.

Files in ``paths.augmented``: ``manifest.json`` (always: mode, copies, ops, counts) and, in offline
mode, ``copies.npz`` with ``x`` uint8 ``[K, N, C, H, W]`` and ``targets`` float32 ``[K, N, classes]``
(label rows: label-mixing ops such as mixup leave soft rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import read_json, write_json, write_with
from pipeline.data import Split, one_hot, to_float
from pipeline.errors import DataError
from pipeline.params import Params

MANIFEST = "manifest.json"
COPIES = "copies.npz"
CHUNK = 4096


@dataclass(frozen=True)
class AugmentedCopies:
    x: np.ndarray  # uint8 [K, N, C, H, W]
    targets: np.ndarray  # float32 [K, N, classes]

    def __len__(self) -> int:
        return len(self.x)

    def copy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[k], self.targets[k]


def copy_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0] >> 1)


def materialise(
    train: Split, augmenters: list[Any], copies: int, seed: int, num_classes: int
) -> AugmentedCopies:
    """Apply the augmenters to the whole training split ``copies`` times, in fixed-size chunks."""
    n = len(train)
    xs = np.empty((copies, *train.x.shape), dtype=np.uint8)
    ts = np.empty((copies, n, num_classes), dtype=np.float32)
    for k in range(copies):
        g = torch.Generator().manual_seed(copy_seed(seed, k))
        for start in range(0, n, CHUNK):
            x = to_float(torch.from_numpy(train.x[start : start + CHUNK]))
            t = one_hot(torch.from_numpy(train.y[start : start + CHUNK]), num_classes)
            for aug in augmenters:
                x, t = aug(x, t, g)
            xs[k, start : start + len(x)] = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            ts[k, start : start + len(x)] = t.numpy()
    return AugmentedCopies(xs, ts)


def write(folder: Path, params: Params, train_count: int, copies: AugmentedCopies | None) -> dict[str, Any]:
    manifest = {
        "mode": params.augment.mode,
        "copies": len(copies) if copies is not None else 0,
        "ops": [spec.describe() for spec in params.augment.ops],
        "seed": params.seed,
        "train_count": train_count,
    }
    if copies is not None:

        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=copies.x, targets=copies.targets)

        write_with(folder / COPIES, writer)
    else:
        (folder / COPIES).unlink(missing_ok=True)
    write_json(folder / MANIFEST, manifest)
    return manifest


def load(folder: Path, train_count: int) -> AugmentedCopies:
    """The copies ``prepare`` wrote; a clear error if they are missing or do not match the split."""
    path = folder / COPIES
    if not path.exists():
        raise DataError(
            f"augment.mode is 'offline' but {path} does not exist; run the prepare stage "
            f"(dvc repro prepare) to materialise the augmented copies."
        )
    with np.load(path, allow_pickle=False) as npz:
        copies = AugmentedCopies(npz["x"], npz["targets"])
    if copies.x.shape[1] != train_count or copies.targets.shape[:2] != copies.x.shape[:2]:
        raise DataError(
            f"{path} holds copies of {copies.x.shape[1]} images, but the training split has {train_count}; "
            f"rerun the prepare stage (dvc repro prepare)."
        )
    return copies


def manifest(folder: Path) -> dict[str, Any]:
    return read_json(folder / MANIFEST)
