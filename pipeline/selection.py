"""The plugins params.yaml selects: resolved once, built with errors that name the params key.

A stage starts by resolving every selection of the whole pipeline (:meth:`Selections.resolve`: name
found, module imported, keywords accepted) and building each once (:meth:`Selections.check`), so a bad
value anywhere (a loss with ``temperature: 0``, a flip with ``p: 2``, a model with ``width: -1``) fails
in seconds, before any data is read or any model trained. The stage then builds its own instances from
the resolved selections, which are never looked up again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from pipeline import interrupts
from pipeline.errors import DistillopsError, PluginError
from pipeline.params import LossSpec, Params, PluginSpec
from pipeline.registry import MODEL_ARGS, PluginInfo, check_kwargs, get

if TYPE_CHECKING:
    from pipeline.data import DataFormat

# the params keys that select plugins, by group
MODEL_KEYS = ("teacher.model", "student.model")
LOSS_KEYS = ("teacher.losses", "distill.losses", "distill.baseline_losses", "transfer.losses")
DATASET_KEYS = ("data.dataset", "target.dataset")
AUGMENT_KEY = "augment.ops"


@dataclass
class Plugin:
    """A built plugin with where it came from, so a run-time failure can name it."""

    obj: Any
    info: PluginInfo
    stage: str
    spec: PluginSpec | None = field(default=None, kw_only=True)  # what params selected (for checkpoints)

    def describe(self) -> str:
        return self.spec.describe() if self.spec is not None else self.info.name

    def __call__(self, *args: Any) -> Any:
        try:
            return self.obj(*args)
        except (interrupts.StageInterrupted, DistillopsError):
            raise
        except Exception as exc:
            raise PluginError(
                f"{self.info.group} plugin '{self.info.name}' ({self.info.provenance}) raised during stage "
                f"'{self.stage}': {first_line(exc)}"
            ) from exc


def first_line(exc: BaseException) -> str:
    """``Type: message`` of an exception a plugin raised, its message cut to the first line: a stage prints
    errors on one line, and torch's carry a C++ stack trace on the lines below."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def plugin_tags(plugins: Sequence[Plugin]) -> dict[str, str]:
    """MLflow tags ``plugins.<group>.<name>`` = ``<distribution>==<version>``."""
    return {p.info.tag: p.info.provenance for p in plugins}


@dataclass(frozen=True)
class Selected:
    """One resolved selection: the params key it came from, the spec, and the loaded factory."""

    key: str  # e.g. "distill.losses[0]"
    group: str
    spec: PluginSpec
    info: PluginInfo
    factory: Callable[..., Any]

    @classmethod
    def resolve(cls, key: str, group: str, spec: PluginSpec) -> Selected:
        try:
            info = get(group, spec.name)
            factory = info.load()
            check_kwargs(info, factory, spec.kwargs, MODEL_ARGS if group == "models" else ())
        except PluginError as exc:
            raise PluginError(f"{key}: {exc}") from exc
        return cls(key, group, spec, info, factory)

    @property
    def weight(self) -> float:
        return self.spec.weight if isinstance(self.spec, LossSpec) else 1.0

    def build(self, stage: str, **fixed: Any) -> Plugin:
        """Call the factory (``fixed``: what the core passes, e.g. a model's classes and channels)."""
        where = f"{self.key}: {self.group} plugin '{self.info.name}' ({self.info.provenance})"
        try:
            obj = self.factory(**fixed, **dict(self.spec.kwargs))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{where} rejected {self.spec.describe()}: {first_line(exc)}") from exc
        if not callable(obj):
            raise PluginError(f"{where} returned a {type(obj).__name__}, which is not callable")
        if self.group == "models" and not isinstance(obj, nn.Module):
            raise PluginError(f"{where} returned a {type(obj).__name__}, not a torch.nn.Module")
        return Plugin(obj, self.info, stage, spec=self.spec)

    def build_model(
        self, num_classes: int, in_channels: int, data_kwargs: Mapping[str, Any] | None = None
    ) -> nn.Module:
        """The model for ``num_classes`` classes of ``in_channels`` channels, with the keywords the data
        provides (``data_kwargs``: image size, normalisation) that this factory takes (see
        :meth:`model_kwargs`)."""
        fixed = self.model_kwargs(data_kwargs or {})
        return self.build("", num_classes=num_classes, in_channels=in_channels, **fixed).obj

    def model_kwargs(self, data_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Of the keywords the data provides, those the factory names in its signature and params do not
        set: a model built for 28x28 grey images by default gets the real image size and statistics,
        while a value in params.yaml always wins and a factory without such keywords gets none."""
        try:
            named = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):  # no signature to read (a builtin): pass nothing
            return {}
        return {
            k: v
            for k, v in data_kwargs.items()
            if k in named
            and k not in self.spec.kwargs
            and named[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }


class Selections:
    """Every plugin selection of a params file, resolved once, by params key."""

    def __init__(self, by_key: dict[str, list[Selected]]) -> None:
        self._by_key = by_key

    @classmethod
    def resolve(cls, params: Params) -> Selections:
        by_key: dict[str, list[Selected]] = {
            AUGMENT_KEY: [
                Selected.resolve(f"{AUGMENT_KEY}[{i}]", "augmenters", spec)
                for i, spec in enumerate(params.augment.ops)
            ]
        }
        for key in MODEL_KEYS:
            by_key[key] = [Selected.resolve(key, "models", _at(params, key))]
        for key in LOSS_KEYS:
            by_key[key] = [
                Selected.resolve(f"{key}[{i}]", "losses", s) for i, s in enumerate(_at(params, key))
            ]
        for key in DATASET_KEYS:
            by_key[key] = [Selected.resolve(key, "datasets", _at(params, key))]
        return cls(by_key)

    def check(self, fmt: DataFormat | None) -> None:
        """Build every selection once (cheap: models are only constructed, for data of format ``fmt``),
        so that a value the plugin rejects fails now, naming its params key. ``fmt`` None (prepare, before
        it has read the data): every selection but the models, which :meth:`check_models` builds later."""
        for key, selected in self._by_key.items():
            for sel in selected:
                if sel.group not in ("models", "datasets"):  # loading data is prepare's work
                    sel.build(key)
        if fmt is not None:
            self.check_models(fmt)

    def check_models(self, fmt: DataFormat) -> None:
        """Build every selected model for data of format ``fmt``."""
        for key in MODEL_KEYS:
            self.model(key).build_model(fmt.num_classes, fmt.channels, fmt.model_kwargs())

    def augmenters(self) -> list[Selected]:
        return list(self._by_key[AUGMENT_KEY])

    def losses(self, key: str) -> list[Selected]:
        return list(self._by_key[key])

    def model(self, key: str) -> Selected:
        return self._by_key[key][0]

    def dataset(self, key: str) -> Selected:
        return self._by_key[key][0]


def _at(params: Params, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def build_augmenters(selected: Sequence[Selected], stage: str) -> list[Plugin]:
    return [sel.build(stage) for sel in selected]


def create(group: str, spec: PluginSpec, **fixed: Any) -> tuple[Any, PluginInfo]:
    """Resolve and build one plugin outside a params file (tests, benchmarks, notebooks)."""
    plugin = Selected.resolve(spec.name, group, spec).build("", **fixed)
    return plugin.obj, plugin.info
