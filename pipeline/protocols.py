"""The call signatures plugins implement (see the plugin contract)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class LossInputs:
    """Everything a loss may look at for one batch.

    ``targets`` are the (possibly mixed) label rows after augmentation, ``labels`` their argmax.
    ``student_features`` / ``teacher_features`` map a module name (as in ``named_modules()``) to that
    module's output, for the modules the loss asked for through ``student_taps`` / ``teacher_taps``.
    ``labelled`` (bool ``[B]``) is set when the batch mixes in images whose labels are withheld (the
    unlabelled pool, ``data.unlabelled_fraction``): their target rows are all zero. A loss that uses
    labels (``uses_labels``, the default) is only ever called with the labelled rows and
    ``labelled=None``; a loss with ``uses_labels = False`` (teacher-only losses) sees the whole batch.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    targets: torch.Tensor
    labels: torch.Tensor
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    labelled: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor) -> LossInputs:
        """The inputs of the rows ``idx`` only (features too), as if the batch held nothing else."""
        return LossInputs(
            self.student_logits[idx],
            None if self.teacher_logits is None else self.teacher_logits[idx],
            self.targets[idx],
            self.labels[idx],
            {k: v[idx] for k, v in self.student_features.items()},
            {k: v[idx] for k, v in self.teacher_features.items()},
        )


@dataclass(frozen=True)
class ImageDataset:
    """What a ``distillops.datasets`` factory returns.

    ``splits`` maps a split name to ``(images, labels)``: images uint8 ``[N, C, H, W]``, labels int64
    ``[N]`` in ``0..len(classes)-1``. A dataset that comes with its own test set provides ``train`` and
    ``test``; one that does not provides ``train`` only, and the pipeline holds a test split out of it
    (by the seed). ``classes`` are the class names, in label order. ``info`` says where the data came
    from (files, checksums, how many images were converted); it goes to ``summary.json``.
    """

    splits: Mapping[str, tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...]
    info: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Augmenter(Protocol):
    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class Loss(Protocol):
    def __call__(self, inputs: LossInputs) -> torch.Tensor: ...


def requires_teacher(loss: object) -> bool:
    return bool(getattr(loss, "requires_teacher", True))


def uses_labels(loss: object) -> bool:
    """Whether a loss reads ``targets`` or ``labels``; assumed unless it says otherwise."""
    return bool(getattr(loss, "uses_labels", True))


def student_taps(loss: object) -> tuple[str, ...]:
    return tuple(getattr(loss, "student_taps", ()) or ())


def teacher_taps(loss: object) -> tuple[str, ...]:
    return tuple(getattr(loss, "teacher_taps", ()) or ())
