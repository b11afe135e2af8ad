"""The call signatures plugins implement (see the plugin contract)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class LossInputs:
    """Everything a loss may look at for one batch.

    ``targets`` are the (possibly mixed) label rows after augmentation, ``labels`` their argmax.
    ``student_features`` / ``teacher_features`` map a module name (as in ``named_modules()``) to that
    module's output, for the modules the loss asked for through ``student_taps`` / ``teacher_taps``.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    targets: torch.Tensor
    labels: torch.Tensor
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)


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


def student_taps(loss: object) -> tuple[str, ...]:
    return tuple(getattr(loss, "student_taps", ()) or ())


def teacher_taps(loss: object) -> tuple[str, ...]:
    return tuple(getattr(loss, "teacher_taps", ()) or ())
