"""Loading a selected dataset plugin (``data.dataset``, ``target.dataset``) and checking what it returned.

The plugin's factory returns a :class:`pipeline.protocols.ImageDataset`; everything it says is checked
here, so that bad data fails in ``prepare`` with a message naming the params key and what is wrong,
never later in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline import data
from pipeline.errors import DataError, DistillopsError, PluginError
from pipeline.params import Params
from pipeline.protocols import ImageDataset
from pipeline.selection import Selected
from pipeline.stage_outputs import PreparedSummary


def load(selected: Selected) -> ImageDataset:
    """Call the dataset factory and check its result (dtypes, shapes, labels, classes per split)."""
    where = f"{selected.key}: datasets plugin '{selected.info.name}' ({selected.info.provenance})"
    try:
        found = selected.factory(**dict(selected.spec.kwargs))
    except DistillopsError as exc:
        raise DataError(f"{selected.key}: {exc}") from exc
    except Exception as exc:
        raise PluginError(
            f"{where} rejected {selected.spec.describe()}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(found, ImageDataset):
        raise PluginError(
            f"{where} returned a {type(found).__name__}; a dataset factory returns "
            f"pipeline.protocols.ImageDataset(splits, classes, info)"
        )
    check(found, selected.key)
    return found


def check(dataset: ImageDataset, key: str) -> None:
    classes = tuple(dataset.classes)
    if len(classes) < 2:
        raise DataError(
            f"{key}: the dataset has {len(classes)} class(es) {list(classes)}; at least two are needed"
        )
    if "train" not in dataset.splits:
        raise DataError(f"{key}: the dataset has no 'train' split (it has {sorted(dataset.splits)})")
    shape = None
    for name, (x, y) in dataset.splits.items():
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(
                f"{key}: split '{name}': images must be a uint8 array [N, C, H, W], got "
                f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', '?')}"
            )
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{key}: split '{name}' has images of {x.shape[1:]}, the others {shape}")
        shape = x.shape[1:]
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{key}: split '{name}': {len(x)} images need {len(x)} integer labels, got {y.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(
                f"{key}: split '{name}': labels must be in 0..{len(classes) - 1} (one per class name), "
                f"found {int(y.min())}..{int(y.max())}"
            )
        present = np.bincount(y, minlength=len(classes)) > 0
        if not present.all():
            missing = [classes[i] for i in np.flatnonzero(~present)]
            raise DataError(
                f"{key}: split '{name}' has no image of class(es) {missing}; every class needs images in "
                f"every split"
            )
    if shape[0] not in (1, 3):
        raise DataError(f"{key}: images have {shape[0]} channels; 1 (grey) or 3 (RGB) are supported")


def check_square(dataset: ImageDataset, key: str) -> None:
    """The models take square images (``image_size``): fail early, saying what to do, when they are not."""
    _, height, width = next(iter(dataset.splits.values()))[0].shape[1:]
    if height != width:
        raise DataError(
            f"{key}: the images are {height}x{width} (height x width); the models take square images. "
            f"Resize or crop them to a square (image_folder does: set its image_size)"
        )


def source_format(dataset: ImageDataset, train: data.Split) -> data.DataFormat:
    """The source task's format: its classes and image shape, statistics from its training split."""
    return data.DataFormat.of(train.x, dataset.classes)


def target_format(source: data.DataFormat, dataset: ImageDataset) -> data.DataFormat:
    """The transfer target's format: its own classes, in the source's input format (channels, size and
    normalisation), so that the student's weights copy over and the transferred model and its
    from-scratch baseline see the same inputs."""
    return dataclasses.replace(source, classes=tuple(dataset.classes))


def format_of(params: Params, task: str) -> data.DataFormat:
    """The format ``prepare`` recorded for ``task`` (``source`` or ``target``) in ``summary.json``."""
    return PreparedSummary.read(params).task(task).format


def as_split(dataset: ImageDataset, name: str) -> data.Split:
    x, y = dataset.splits[name]
    return data.Split(x, np.asarray(y, dtype=np.int64))
