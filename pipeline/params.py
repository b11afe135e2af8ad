"""params.yaml parsed into frozen dataclasses.

The parser is strict: an unknown key, a missing key or a value of the wrong type fails at once with the
file and the dotted key named (and, for a misspelt key, the closest accepted one). The dataclasses carry
types only: every value, and the comment saying why it has that value, lives in params.yaml, the one
place users edit. A plugin's own defaults live in the plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

DEFAULT_PARAMS_FILE = "params.yaml"


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, except that a value it cannot build (the date 2024-13-45, ``!!float abc``, an
    integer of thousands of digits) is a YAML error at its line, not a ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc})", node.start_mark
            ) from None


# The settings that take one of a few words. Members are strings (``Optimizer.SGD == "sgd"``); the parser
# refuses any other word, naming the key and the accepted ones.
class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class AugmentMode(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Optimizer(StrEnum):
    ADAMW = "adamw"
    SGD = "sgd"


class Schedule(StrEnum):
    ONECYCLE = "onecycle"
    COSINE = "cosine"
    CONSTANT = "constant"


class Procedure(StrEnum):
    JOINT = "joint"
    SCORED = "scored"


class ScoredTargets(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class TransferVariant(StrEnum):
    FINETUNE = "finetune"
    LINEAR_PROBE = "linear_probe"
    GRADUAL = "gradual"


class TransferOrder(StrEnum):
    DISTIL_THEN_TRANSFER = "distil_then_transfer"
    TRANSFER_THEN_DISTIL = "transfer_then_distil"


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
    """Every folder and file a stage reads or writes; dvc.yaml interpolates the same keys."""

    prepared: str
    augmented: str
    teacher: str
    student: str
    student_alone: str
    transferred: str
    scratch: str
    onnx: str
    metrics: str
    plots: str
    checkpoints: str
    teachers: str = "teachers"  # the files of imported teachers: a DVC dependency of the teacher stage


@dataclass(frozen=True)
class DataParams:
    dataset: PluginSpec  # a distillops.datasets selection (a bare name is valid)
    val_size: int
    train_limit: int | None
    test_limit: int | None
    unlabelled_fraction: float


@dataclass(frozen=True)
class TargetParams:
    dataset: PluginSpec
    test_size: int
    val_size: int
    label_budget: int


@dataclass(frozen=True)
class AugmentParams:
    ops: tuple[PluginSpec, ...]
    mode: AugmentMode
    copies: int


@dataclass(frozen=True)
class RuntimeParams:
    device: Device
    threads: int | None
    deterministic: bool
    channels_last: bool
    progress: bool
    eval_batch_size: int
    # how the training stages (teacher, distill, transfer) run; the defaults are the single-process,
    # float32, eager path, so a params.yaml written before these keys existed runs as it did
    processes: int = 1  # more than 1: torchrun with that many DistributedDataParallel processes
    precision: Precision = Precision.FP32  # or bf16 / fp16 autocast
    compile: bool = False  # torch.compile the models' forward


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings shared by every training stage."""

    epochs: int
    batch_size: int
    optimizer: Optimizer
    lr: float
    weight_decay: float
    schedule: Schedule
    augment: bool


@dataclass(frozen=True)
class InputSpec:
    """What an imported teacher expects: the data's [0, 1] pixels are converted to ``channels``, resized to
    ``image_size`` x ``image_size``, then ``(x - mean) / std``. Unset values are read from the file where
    it says them (an ONNX graph's input shape, its metadata), else the data's own."""

    image_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None  # ONNX only: nchw or nhwc (read from the input shape when it tells)


IMPORT_KINDS = ("weights", "onnx", "mlflow")


@dataclass(frozen=True)
class ImportedTeacher:
    """One teacher taken as it is: a state dict for a model plugin (``weights``), an ONNX file (``onnx``)
    or an MLflow model URI (``mlflow``)."""

    kind: str  # one of IMPORT_KINDS
    location: str  # the file's path, or the MLflow URI
    model: PluginSpec | None = None  # weights: the model plugin the state dict is for
    input: InputSpec | None = None
    output: str | None = None  # logits or probabilities; None: read from the file (default logits)
    weight: float = 1.0  # its share of an ensemble's averaged probabilities

    def describe(self) -> str:
        return f"{self.kind} {self.location}" + (f" ({self.model.describe()})" if self.model else "")


@dataclass(frozen=True)
class TeacherSource:
    """``teacher.source``: ``train`` (no members) or the imported teachers (several: an ensemble)."""

    members: tuple[ImportedTeacher, ...] = ()

    @property
    def trains(self) -> bool:
        return not self.members

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1

    def describe(self) -> str:
        if self.trains:
            return "train"
        return " + ".join((f"{m.weight:g} x " if self.ensemble else "") + m.describe() for m in self.members)


@dataclass(frozen=True)
class InitParams:
    """Weights to start training from: a state-dict file, or (the ``torchvision`` model plugin) the name
    of torchvision weights, read from the local torch hub cache (``download: true`` allows fetching them)."""

    weights: str
    download: bool = False


@dataclass(frozen=True)
class TeacherParams(TrainParams):
    model: PluginSpec
    losses: tuple[LossSpec, ...]
    source: TeacherSource = TeacherSource()
    init: InitParams | None = None


@dataclass(frozen=True)
class StudentParams:
    model: PluginSpec
    init: InitParams | None = None


@dataclass(frozen=True)
class WarmStart:
    """Sub-model weight transfer: train on a random ``fraction`` of the training split for ``epochs``
    first, then continue on all of it from those weights."""

    fraction: float
    epochs: int


@dataclass(frozen=True)
class DistillParams(TrainParams):
    losses: tuple[LossSpec, ...]
    baseline_losses: tuple[LossSpec, ...]
    warm_start: WarmStart | None
    exclude_classes: tuple[int, ...]
    procedure: Procedure
    scored_targets: ScoredTargets
    # the student alone's own epochs (None: ``epochs``), so each student trains for the schedule that
    # suits it: distillation keeps gaining from long schedules where the student alone overfits
    baseline_epochs: int | None = None

    @property
    def alone_epochs(self) -> int:
        """The student alone's epochs: ``baseline_epochs``, or ``epochs`` where that is None."""
        return self.baseline_epochs if self.baseline_epochs is not None else self.epochs


@dataclass(frozen=True)
class TransferParams(TrainParams):
    losses: tuple[LossSpec, ...]
    head: tuple[str, ...]
    body_lr_scale: float
    variant: TransferVariant
    order: TransferOrder


@dataclass(frozen=True)
class ExportParams:
    opset: int
    atol: float
    parity_batches: tuple[int, ...]
    int8: bool
    calibration_samples: int


@dataclass(frozen=True)
class EvaluateParams:
    latency_warmup: int
    latency_repeats: int
    latency_rounds: int
    latency_threads: int | None  # threads per timed call (None: as many as PyTorch uses)
    latency_batches: tuple[int, ...]


@dataclass(frozen=True)
class MlflowParams:
    experiment: str
    registered_model: str
    champion_margin: float  # a new version takes the 'champion' alias only when it beats it by this much
    champion_max_latency_ms: float | None  # ... and answers one image within this (None: no bound)


@dataclass(frozen=True)
class Params:
    seed: int
    paths: Paths
    data: DataParams
    target: TargetParams
    augment: AugmentParams
    runtime: RuntimeParams
    teacher: TeacherParams
    student: StudentParams
    distill: DistillParams
    transfer: TransferParams
    export: ExportParams
    evaluate: EvaluateParams
    mlflow: MlflowParams


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file; every problem names the file and the dotted key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the repository root or pass --params") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
            f"save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # the YAML reader recurses once per level of nesting
        raise ParamsError(
            f"{path}: nested too deeply to read (lists or mappings hundreds of levels inside one another); "
            f"no setting of a params file is more than a few levels deep"
        ) from None
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


def _shown(key: Any) -> str:
    """A key as messages show it: as written, or quoted with its escapes (``'epochs\\n'``) when it would not
    show as written on one line (a line break, a control or invisible character, surrounding spaces)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        _fail(
            source,
            prefix.removesuffix("."),
            f"expected a mapping of keys to values, got {type(raw).__name__} {raw!r}",
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}{_shown(key)}"
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            _fail(source, dotted, f"unknown key{hint}; accepted keys here: {', '.join(names)}")
    required = [f.name for f in dataclasses.fields(cls) if _required(f)]
    missing = [name for name in required if name not in raw]
    if missing:
        _fail(
            source,
            f"{prefix}{missing[0]}",
            f"missing; every setting is written in params.yaml (missing here: "
            f"{', '.join(prefix + m for m in missing)}). Copy it from the distillops repository's params.yaml.",
        )
    values = {
        name: _convert(hints[name], raw[name], f"{prefix}{name}", source) for name in names if name in raw
    }
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


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
        if inner is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one number for every channel
        if not isinstance(value, list | tuple):
            _fail(source, key, f"expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp in (PluginSpec, LossSpec):
        return _plugin_spec(tp, value, key, source)
    if tp is TeacherSource:
        return _teacher_source(value, key, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", source)
    if isinstance(tp, type) and issubclass(tp, Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            _fail(source, key, f"{value!r} is not one of: {', '.join(allowed)}")
        return tp(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(value, key, source)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        _fail(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        _fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return math.inf if value > 0 else -math.inf


def _finite(value: int | float, key: str, source: str) -> float:
    """A number as a float, refusing NaN and infinities (YAML's .nan and .inf), which no setting takes."""
    number = _as_float(value)
    if not math.isfinite(number):
        _fail(source, key, f"expected a finite number, got {value!r}")
    return number


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
        return LossSpec(
            value["name"], types.MappingProxyType(kwargs), _finite(weight, f"{key}.weight", source)
        )
    return PluginSpec(value["name"], types.MappingProxyType(kwargs))


_SOURCE_HELP = (
    "train, or {weights: PATH, model: {name: ...}}, {onnx: PATH}, {mlflow: URI}, or a list of these "
    "(an ensemble)"
)


def _teacher_source(value: Any, key: str, source: str) -> TeacherSource:
    if value == "train":
        return TeacherSource()
    if isinstance(value, Mapping):
        return TeacherSource((_imported(value, key, source),))
    if isinstance(value, list | tuple) and value:
        return TeacherSource(tuple(_imported(v, f"{key}[{i}]", source) for i, v in enumerate(value)))
    _fail(source, key, f"expected {_SOURCE_HELP}; got {value!r}")


def _imported(value: Any, key: str, source: str) -> ImportedTeacher:
    if not isinstance(value, Mapping):
        _fail(source, key, f"expected a mapping ({_SOURCE_HELP}); got {value!r}")
    kinds = [k for k in IMPORT_KINDS if k in value]
    if len(kinds) != 1:
        _fail(
            source,
            key,
            f"needs exactly one of {', '.join(IMPORT_KINDS)} (the teacher's file or URI), got "
            f"{kinds or sorted(map(str, value))}",
        )
    kind = kinds[0]
    allowed = {kind, "input", "output", "weight"} | ({"model"} if kind != "onnx" else set())
    for k in value:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
            _fail(
                source,
                f"{key}.{_shown(k)}",
                f"unknown key{hint}; accepted keys here: {', '.join(sorted(allowed))}",
            )
    location = value[kind]
    if not isinstance(location, str) or not location:
        _fail(source, f"{key}.{kind}", f"expected a path or URI (a string), got {location!r}")
    model = value.get("model")
    if kind == "weights" and model is None:
        _fail(source, f"{key}.model", "a weights file needs the model plugin it is for: model: {name: ...}")
    spec = _plugin_spec(PluginSpec, model, f"{key}.model", source) if model is not None else None
    raw_input = value.get("input")
    spec_input = _build(InputSpec, raw_input, f"{key}.input.", source) if raw_input is not None else None
    if spec_input is not None:
        _check_input(spec_input, f"{key}.input", source)
    output = value.get("output")
    if output is not None and output not in ("logits", "probabilities"):
        _fail(source, f"{key}.output", f"{output!r} is not one of: logits, probabilities")
    weight = value.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 < _as_float(weight) < math.inf
    ):
        _fail(source, f"{key}.weight", f"expected a number > 0 (finite), got {weight!r}")
    return ImportedTeacher(kind, location, spec, spec_input, output, float(weight))


def _check_input(spec: InputSpec, key: str, source: str) -> None:
    if spec.channels is not None and spec.channels not in (1, 3):
        _fail(source, f"{key}.channels", f"must be 1 (grey) or 3 (RGB), got {spec.channels}")
    if spec.image_size is not None and spec.image_size < 1:
        _fail(source, f"{key}.image_size", f"must be at least 1, got {spec.image_size}")
    if spec.layout is not None and spec.layout not in ("nchw", "nhwc"):
        _fail(source, f"{key}.layout", f"{spec.layout!r} is not one of: nchw, nhwc")
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if values is None:
            continue
        if spec.channels is not None and len(values) not in (1, spec.channels):
            _fail(
                source,
                f"{key}.{name}",
                f"needs 1 or {spec.channels} values (one per channel), got {list(values)}",
            )
        if name == "std" and any(v <= 0 for v in values):
            _fail(source, f"{key}.std", f"must be > 0, got {list(values)}")


def _check_values(p: Params, source: str) -> None:
    flat = flatten(p)
    for f in dataclasses.fields(Paths):
        path = getattr(p.paths, f.name)
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in path):
            _fail(
                source,
                f"paths.{f.name}",
                f"{path!r} holds a line break or another control character; write the path without it",
            )
    positive = [
        "data.val_size",
        "target.test_size",
        "target.label_budget",
        "export.opset",
        "evaluate.latency_repeats",
        "evaluate.latency_rounds",
        "export.calibration_samples",
        "augment.copies",
        "runtime.eval_batch_size",
        "runtime.processes",
    ]
    for stage in ("teacher", "distill", "transfer"):
        positive += [f"{stage}.epochs", f"{stage}.batch_size"]
        if getattr(p, stage).batch_size < p.runtime.processes:
            _fail(
                source,
                f"{stage}.batch_size",
                f"{getattr(p, stage).batch_size} is the global batch, shared by runtime.processes: "
                f"{p.runtime.processes} processes; it must be at least that",
            )
        if getattr(p, stage).lr <= 0:
            _fail(source, f"{stage}.lr", f"must be > 0, got {getattr(p, stage).lr}")
        if getattr(p, stage).weight_decay < 0:  # the optimizers refuse it, but only once training starts
            _fail(source, f"{stage}.weight_decay", f"must be >= 0, got {getattr(p, stage).weight_decay}")
    for key in ("data.train_limit", "data.test_limit", "runtime.threads", "evaluate.latency_threads"):
        if flat[key] is not None:
            positive.append(key)
    for key in positive:
        if flat[key] < 1:
            _fail(source, key, f"must be at least 1, got {flat[key]}")
    for stage in ("teacher", "distill", "transfer"):
        if not getattr(p, stage).losses:
            _fail(source, f"{stage}.losses", "needs at least one loss")
    if p.mlflow.champion_margin < 0:
        _fail(source, "mlflow.champion_margin", f"must be >= 0, got {p.mlflow.champion_margin}")
    if p.mlflow.champion_max_latency_ms is not None and p.mlflow.champion_max_latency_ms <= 0:
        _fail(
            source,
            "mlflow.champion_max_latency_ms",
            f"must be > 0 or null, got {p.mlflow.champion_max_latency_ms}",
        )
    if not 0 < p.transfer.body_lr_scale <= 1:
        _fail(source, "transfer.body_lr_scale", f"must be in (0, 1], got {p.transfer.body_lr_scale}")
    if p.distill.warm_start is not None:
        ws = p.distill.warm_start
        if not 0 < ws.fraction <= 1:
            _fail(source, "distill.warm_start.fraction", f"must be in (0, 1], got {ws.fraction}")
        if ws.epochs < 1:
            _fail(source, "distill.warm_start.epochs", f"must be at least 1, got {ws.epochs}")
    if p.distill.baseline_epochs is not None and p.distill.baseline_epochs < 1:
        _fail(
            source,
            "distill.baseline_epochs",
            f"must be at least 1, or null for distill.epochs; got {p.distill.baseline_epochs}",
        )
    if any(c < 0 for c in p.distill.exclude_classes):
        _fail(
            source,
            "distill.exclude_classes",
            f"class indices are >= 0, got {list(p.distill.exclude_classes)}",
        )
    if not 0 <= p.data.unlabelled_fraction < 1:
        _fail(source, "data.unlabelled_fraction", f"must be in [0, 1), got {p.data.unlabelled_fraction}")
    if p.distill.procedure == "scored" and p.distill.warm_start is not None:
        _fail(
            source,
            "distill.warm_start",
            "does not combine with distill.procedure: scored (the scored student already starts from the "
            "student trained alone); set one of them back to its default",
        )
    if p.data.unlabelled_fraction > 0 and p.distill.exclude_classes:
        _fail(
            source,
            "distill.exclude_classes",
            "does not combine with data.unlabelled_fraction > 0 (the unlabelled pool's classes are unknown, "
            "so its images of the left-out classes cannot be removed); set one of them back to its default",
        )
    if p.export.atol <= 0:
        _fail(source, "export.atol", f"must be > 0, got {p.export.atol}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, for logging params and checking values; plugin specs become strings."""
    if isinstance(obj, TeacherSource):
        return {prefix.rstrip("."): obj.describe()}
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
                out[f"{prefix}{f.name}"] = value.value if isinstance(value, Enum) else value
        return out
    if isinstance(obj, tuple):
        out = {}
        for i, item in enumerate(obj):
            out.update(flatten(item, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}
