"""The losses of one training run, as one object the training step calls.

A :class:`LossSet` is built once from the resolved loss selections. It owns what every step needs from
the losses: the weighted sum, a unique name per term for logging (``ce``, ``ce_2`` when repeated), the
check that each term is a scalar, whether a teacher is needed, which module outputs to tap
(:func:`feature_taps`), the trainable loss modules (e.g. a FitNets regressor), and the guard that stops
training on a non-finite loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline import layout
from pipeline.errors import PluginError, TrainingDiverged
from pipeline.params import LossSpec
from pipeline.protocols import LossInputs, requires_teacher, student_taps, teacher_taps, uses_labels
from pipeline.selection import Plugin, Selected


@dataclass(frozen=True)
class LossTerm:
    name: str  # unique within the set: the plugin's name, numbered when it repeats
    plugin: Plugin
    weight: float


class LossSet:
    def __init__(self, plugins: Sequence[tuple[Plugin, float]], stage: str) -> None:
        if not plugins:
            raise PluginError(f"stage '{stage}' has no loss to train with")
        self.stage = stage
        terms: list[LossTerm] = []
        for plugin, weight in plugins:
            names = {t.name for t in terms}
            name = (
                plugin.info.name if plugin.info.name not in names else f"{plugin.info.name}_{len(terms) + 1}"
            )
            terms.append(LossTerm(name, plugin, float(weight)))
        self.terms = tuple(terms)
        self.names = tuple(t.name for t in terms)
        self.needs_teacher = tuple(t.name for t in terms if requires_teacher(t.plugin.obj))
        self.student_taps = tuple(dict.fromkeys(n for t in terms for n in student_taps(t.plugin.obj)))
        self.teacher_taps = tuple(dict.fromkeys(n for t in terms for n in teacher_taps(t.plugin.obj)))
        self.label_free = tuple(t.name for t in terms if not uses_labels(t.plugin.obj))
        self.modules = nn.ModuleList([t.plugin.obj for t in terms if isinstance(t.plugin.obj, nn.Module)])

    @classmethod
    def build(cls, selected: Sequence[Selected], stage: str) -> LossSet:
        """Fresh loss objects from resolved selections (fresh trainable parts for every model)."""
        return cls([(sel.build(stage), sel.weight) for sel in selected], stage)

    @classmethod
    def from_specs(cls, specs: Sequence[LossSpec], stage: str) -> LossSet:
        """Resolve and build in one go (tests, benchmarks)."""
        return cls.build([Selected.resolve(f"losses[{i}]", "losses", s) for i, s in enumerate(specs)], stage)

    @property
    def plugins(self) -> list[Plugin]:
        return [t.plugin for t in self.terms]

    @property
    def has_lazy(self) -> bool:
        """Whether a loss module still has parameters sized at its first call (e.g. FitNets)."""
        return any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.modules.parameters())

    def fingerprint(self) -> list[tuple[str, float]]:
        """What a checkpoint must agree on to be resumed."""
        return [(t.plugin.describe(), t.weight) for t in self.terms]

    def metrics(self) -> dict[str, float]:
        """What loss objects with a ``metrics()`` method report about themselves (e.g. a learned
        temperature), keyed ``<term name>_<reading>``."""
        out: dict[str, float] = {}
        for term in self.terms:
            report = getattr(term.plugin.obj, "metrics", None)
            if callable(report):
                out.update({layout.LOSS_STATE.format(term.name, k): float(v) for k, v in report().items()})
        return out

    def check_teacher(self, has_teacher: bool) -> None:
        if self.needs_teacher and not has_teacher:
            raise PluginError(
                f"loss(es) {list(self.needs_teacher)} need a teacher, but stage '{self.stage}' has none; "
                f"use losses that do not need one (e.g. ce) here."
            )

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the weighted sum, to backpropagate; each term's value, in ``names`` order).

        When ``inputs.labelled`` marks unlabelled rows, a term that uses labels sees the labelled rows
        only (zero when the batch has none); the others see the whole batch.
        """
        total: torch.Tensor | None = None
        values = []
        mixed = inputs.labelled is not None
        labelled_only: LossInputs | None = None  # None: the batch has no labelled row
        if mixed and len(self.label_free) < len(self.terms):
            idx = inputs.labelled.nonzero().squeeze(1)  # the one host sync the unlabelled pool costs per step
            labelled_only = inputs.rows(idx) if len(idx) else None
        for term in self.terms:
            if not mixed or term.name in self.label_free:
                value = term.plugin(inputs)
            elif labelled_only is None:
                value = inputs.student_logits.sum() * 0
            else:
                value = term.plugin(labelled_only)
            if not torch.is_tensor(value) or value.dim() != 0:
                info = term.plugin.info
                raise PluginError(
                    f"losses plugin '{info.name}' ({info.provenance}) returned {type(value).__name__} of "
                    f"shape {getattr(value, 'shape', '?')} in stage '{self.stage}'; a loss must return a "
                    f"scalar tensor"
                )
            values.append(value)
            weighted = value if term.weight == 1.0 else term.weight * value
            total = weighted if total is None else total + weighted
        return total, values

    def guard(self, readings: Sequence[float]) -> None:
        """Stop on a non-finite loss; ``readings`` are ``[total, term 1, term 2, ...]`` on the host."""
        if not math.isfinite(readings[0]):
            terms = dict(zip(self.names, readings[1:], strict=True))
            raise TrainingDiverged(
                f"stage '{self.stage}': the loss became {readings[0]} (terms: {terms}); training stopped "
                f"before the update, no checkpoint was written with it. Lower the learning rate or check "
                f"the loss plugins."
            )


@contextlib.contextmanager
def feature_taps(model: nn.Module | None, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store the outputs of the named modules; removed on exit."""
    store: dict[str, torch.Tensor] = {}
    if model is None or not names:
        yield store
        return
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        available = ", ".join(n for n in modules if n) or "none"
        raise PluginError(
            f"loss asks for feature(s) {missing} which the model does not have; module names: {available}"
        )
    handles = []
    for name in dict.fromkeys(names):

        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            store[name] = out

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
