"""Teachers the pipeline did not train: a state dict for a model plugin, an ONNX classifier from any
framework, a model from an MLflow registry or run, or an ensemble of these (``teacher.source``).

The teacher stage checks an imported teacher against the data in seconds (:func:`check_source`, before
any data work), measures it, and writes it to ``paths.teacher`` in a form the later stages read back with
:func:`load_teacher`:

- ``plugin``: ``model.safetensors`` + ``model.json``, exactly as a trained teacher (a weights import is
  indistinguishable from the trained path); ``input`` in the sidecar when the teacher expects another
  image format than the data's;
- ``onnx``: ``teacher.onnx`` (the imported file, unchanged) + ``model.json`` saying how to feed it;
- ``ensemble``: ``members/<i>/`` (one of the above each) + ``model.json`` with the members' weights.

Every kind comes back as an ``nn.Module`` that takes the data's images (float ``[B, C, H, W]`` in [0, 1])
and returns logits (log-probabilities for a probabilities output or an ensemble), converting the images
on the fly to what the teacher expects (:class:`InputAdapter`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.atomic import read_json, write_json, write_with
from pipeline.data import DataFormat
from pipeline.errors import DistillopsError
from pipeline.layout import META, WEIGHTS
from pipeline.modelio import count_parameters, load_model, save_model
from pipeline.params import ImportedTeacher, InputSpec, PluginSpec, TeacherSource
from pipeline.selection import Selected
from pipeline.weights import file_digest, load_into, read_state_dict

ONNX_FILE = "teacher.onnx"
MEMBERS = "members"
MEAN_KEYS = ("distillops.mean", "mean")  # ONNX metadata keys read for the normalisation (JSON lists)
STD_KEYS = ("distillops.std", "std")
OUTPUT_KEYS = ("distillops.output",)


# --- the modules ---------------------------------------------------------------------------------------
class InputAdapter(nn.Module):
    """The data's images ``[B, C, H, W]`` in [0, 1] to what a teacher expects: channels (grey replicated
    to RGB, RGB to grey by ITU-R 601 luma, as ``prepare`` converts), size (bilinear, antialiased), then
    ``(x - mean) / std``."""

    def __init__(
        self,
        channels: int,
        size: tuple[int, int],
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        data_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.channels, self.size, self.data_shape = channels, tuple(size), data_shape
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(list(std), dtype=torch.float64).float().view(1, -1, 1, 1)
        )
        self.normalises = any(m != 0 for m in mean) or any(s != 1 for s in std)

    @property
    def identity(self) -> bool:
        return (
            self.data_shape is not None
            and self.data_shape == (self.channels, *self.size)
            and not self.normalises
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            if self.channels == 1:
                luma = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                x = (x * luma).sum(1, keepdim=True)
            else:
                x = x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if self.normalises:
            x = (x - self.mean) * self.inv_std
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "image_size": list(self.size),
            "mean": self.mean.flatten().tolist(),
            "std": (1.0 / self.inv_std.double()).flatten().tolist(),
        }


class Adapted(nn.Module):
    """A PyTorch teacher fed through an :class:`InputAdapter` (it was trained on another image format)."""

    def __init__(self, adapter: InputAdapter, model: nn.Module) -> None:
        super().__init__()
        self.adapter, self.model = adapter, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.adapter(x))


@dataclass
class OnnxInfo:
    """How to feed an ONNX classifier and read its answer, and where each setting came from."""

    input_name: str
    layout: str  # nchw or nhwc
    channels: int
    height: int
    width: int
    dtype: str  # float32 or uint8 (then pixels are fed as 0..255)
    batch: int | None  # a fixed batch size, or None (dynamic)
    output_name: str
    output: str  # logits or probabilities
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    parameters: int
    found: dict[str, str] = field(default_factory=dict)  # setting -> "file", "params" or "default"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "found"}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OnnxInfo:
        raw = dict(raw)
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        return cls(**raw)

    def describe(self) -> str:
        dims = (
            [self.channels, self.height, self.width]
            if self.layout == "nchw"
            else [self.height, self.width, self.channels]
        )
        by: dict[str, list[str]] = {}
        for k, v in self.found.items():
            by.setdefault(v.split(" (")[0], []).append(k)
        where = "; ".join(f"{', '.join(keys)} from {v}" for v, keys in by.items())
        if "defaults" in by:
            where += ": set input.mean / input.std / output where the model expects otherwise"
        return (
            f"input '{self.input_name}' [{self.batch or 'batch'}, {', '.join(map(str, dims))}] "
            f"{self.layout.upper()} {self.dtype}, mean {list(self.mean)} std {list(self.std)}; output "
            f"'{self.output_name}' ({self.output}), {self.num_classes} classes"
            + (f" ({where})" if where else "")
        )


class OnnxTeacher(nn.Module):
    """An ONNX classifier run by ONNX Runtime on the CPU, behind an :class:`InputAdapter`; it has no
    features to tap and no gradients (a teacher needs neither)."""

    def __init__(self, path: Path, info: OnnxInfo, data_shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        from pipeline.onnx_model import ort_session

        self.path, self.info = path, info
        self.adapter = InputAdapter(info.channels, (info.height, info.width), info.mean, info.std, data_shape)
        self.session = ort_session(path)
        self.onnx_parameters = info.parameters
        # the file's identity in the state dict: a checkpoint resumes only with the same teacher
        self.register_buffer(
            "file_sha256", torch.tensor(list(bytes.fromhex(file_digest(path))), dtype=torch.uint8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        x = self.adapter(x.float()).detach().cpu().contiguous()
        if self.info.layout == "nhwc":
            x = x.permute(0, 2, 3, 1).contiguous()
        feed = x.numpy()
        if self.info.dtype == "uint8":
            feed = np.clip(np.rint(feed * 255.0), 0, 255).astype(np.uint8)
        step = self.info.batch or max(len(feed), 1)
        outs = [
            self.session.run([self.info.output_name], {self.info.input_name: feed[i : i + step]})[0]
            for i in range(0, len(feed), step)
        ]
        out = torch.from_numpy(np.concatenate(outs).reshape(len(feed), -1).astype(np.float32))
        if self.info.output == "probabilities":
            out = out.clamp_min(1e-12).log()  # log-space: a softmax of it gives the probabilities back
        return out.to(device)


class Ensemble(nn.Module):
    """Members' probabilities averaged with ``weights``; returns the log of the average (logits whose
    softmax is that average)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.tensor(list(weights), dtype=torch.float64)
        self.register_buffer("log_weights", (w / w.sum()).log().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(stacked + self.log_weights.view(-1, 1, 1), dim=0)


def teacher_parameters(module: nn.Module) -> int:
    """Parameters of a teacher, ONNX members' initializers included."""
    return count_parameters(module) + sum(getattr(m, "onnx_parameters", 0) for m in module.modules())


# --- ONNX files ----------------------------------------------------------------------------------------
def _dim(d: Any) -> int | None:
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None


def inspect_onnx(
    path: Path, key: str, spec: InputSpec | None, output: str | None, fmt: DataFormat
) -> OnnxInfo:
    """Read an ONNX classifier's input (shape, layout, dtype), output and normalisation from the file,
    params (``spec``, ``output``) filling in or overriding; fails naming the key when the data's images
    cannot be fed to it or its classes differ from the data's."""
    try:
        import onnx
    except ImportError:
        from pipeline.errors import MissingDependencyError

        raise MissingDependencyError("onnx", "An ONNX teacher") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DistillopsError(
            f"{key}: {path} cannot be read as an ONNX model ({type(exc).__name__}: {str(exc)[:200]}); the file "
            f"is corrupt, truncated or not ONNX"
        ) from None
    spec = spec or InputSpec()
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise DistillopsError(
            f"{key}: {path} has {len(inputs)} inputs ({[i.name for i in inputs]}); an image classifier takes one"
        )
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    dtype = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8"}.get(elem)
    if dtype is None:
        raise DistillopsError(
            f"{key}: {path}: its input '{inp.name}' is of ONNX type "
            f"{onnx.TensorProto.DataType.Name(elem)}; float32 or uint8 images can be fed"
        )
    dims = [_dim(d) for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise DistillopsError(
            f"{key}: {path}: its input '{inp.name}' has {len(dims)} dimensions {dims}; these images can be fed "
            f"as [batch, C, H, W] or [batch, H, W, C] only"
        )
    found: dict[str, str] = {}
    layout = spec.layout
    if layout is None:
        if dims[1] in (1, 3) and dims[3] not in (1, 3):
            layout = "nchw"
        elif dims[3] in (1, 3) and dims[1] not in (1, 3):
            layout = "nhwc"
        elif dims[1] in (1, 3):
            layout = "nchw"
        else:
            raise DistillopsError(
                f"{key}: {path}: cannot tell the channel axis of input '{inp.name}' {dims}; set "
                f"{key}.input.layout (nchw or nhwc) and {key}.input.channels"
            )
        found["layout"] = "file"
    c_file, h_file, w_file = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    channels = _pick(spec.channels, c_file, "channels", key, path, found)
    if channels not in (1, 3):
        raise DistillopsError(
            f"{key}: {path}: its input '{inp.name}' {dims} takes {channels} channels; grey (1) or RGB (3) images "
            f"can be fed"
        )
    height = _pick(spec.image_size, h_file, "image_size", key, path, found)
    width = _pick(spec.image_size, w_file, "image_size", key, path, found)
    props = {p.key: p.value for p in model.metadata_props}
    mean = _norm(spec.mean, props, MEAN_KEYS, 0.0, channels, "mean", key, found)
    std = _norm(spec.std, props, STD_KEYS, 1.0, channels, "std", key, found)
    outputs = list(graph.output)
    out = next((o for o in outputs if o.name == "logits"), outputs[0] if outputs else None)
    if out is None:
        raise DistillopsError(f"{key}: {path} has no output")
    out_dims = [_dim(d) for d in out.type.tensor_type.shape.dim]
    if output is None:
        meta_output = next((props[k] for k in OUTPUT_KEYS if k in props), None)
        producer = next((n for n in graph.node if out.name in n.output), None)
        if meta_output in ("logits", "probabilities"):
            output, found["output"] = meta_output, "file"
        elif producer is not None and producer.op_type == "Softmax":
            output, found["output"] = "probabilities", "file (a Softmax makes it)"
        else:
            output, found["output"] = "logits", "defaults (no Softmax makes the output)"
    else:
        found["output"] = "params"
    num_classes = out_dims[-1] if out_dims and out_dims[-1] is not None else None
    batch = dims[0]
    parameters = int(sum(int(np.prod(i.dims)) for i in graph.initializer))
    info = OnnxInfo(
        inp.name,
        layout,
        channels,
        height,
        width,
        dtype,
        batch,
        out.name,
        output,
        num_classes or 0,
        mean,
        std,
        parameters,
        found,
    )
    if num_classes is None:  # a symbolic class axis: ask the model
        info.num_classes = _probe_classes(path, info, key)
    if info.num_classes != fmt.num_classes:
        raise DistillopsError(
            f"{key}: {path}: its output '{out.name}' has {info.num_classes} classes and the data has "
            f"{fmt.num_classes} ({', '.join(fmt.classes[:5])}{', ...' if fmt.num_classes > 5 else ''}); a teacher "
            f"must score the data's classes, in the data's label order"
        )
    return info


def _pick(
    given: int | None, in_file: int | None, name: str, key: str, path: Path, found: dict[str, str]
) -> int:
    if given is not None:
        if in_file is not None and in_file != given:
            raise DistillopsError(
                f"{key}.input.{name}: {given} but {path} fixes it at {in_file}; remove {key}.input.{name} or "
                f"set it to {in_file}"
            )
        found[name] = "params"
        return given
    if in_file is None:
        raise DistillopsError(
            f"{key}: {path} does not say its input's {name.replace('_', ' ')} (a symbolic dimension); set "
            f"{key}.input.{name}"
        )
    found[name] = "file"
    return in_file


def _norm(
    given: tuple[float, ...] | None,
    props: Mapping[str, str],
    keys: Sequence[str],
    default: float,
    channels: int,
    name: str,
    key: str,
    found: dict[str, str],
) -> tuple[float, ...]:
    values: Sequence[float] | None = given
    if values is not None:
        found[name] = "params"
    else:
        for k in keys:
            if k in props:
                try:
                    raw = json.loads(props[k])
                    values = [float(v) for v in (raw if isinstance(raw, list) else [raw])]
                    found[name] = f"file metadata '{k}'"
                    break
                except (ValueError, TypeError):
                    continue
    if values is None:
        values, found[name] = (
            [default],
            "defaults (set input.mean/std or output where the model expects otherwise)",
        )
    if len(values) not in (1, channels):
        raise DistillopsError(
            f"{key}.input.{name}: {list(values)} needs 1 or {channels} values (one per channel)"
        )
    return tuple(float(v) for v in values)


def _probe_classes(path: Path, info: OnnxInfo, key: str) -> int:
    probe = OnnxTeacher(path, info)
    try:
        with torch.no_grad():
            out = probe(torch.zeros(1, info.channels, info.height, info.width))
    except Exception as exc:
        raise DistillopsError(
            f"{key}: {path} fails on a test image of {info.channels}x{info.height}x{info.width}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return int(out.shape[-1])


# --- MLflow ----------------------------------------------------------------------------------------------
def resolve_mlflow(uri: str, key: str, into: Path) -> tuple[Path, dict[str, str]]:
    """Download the model at ``uri`` into ``into``; (its folder, provenance: the URI, the resolved
    version's URI, name, version and run)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    store = os.environ.get("MLFLOW_TRACKING_URI") or tracking.tracking_uri()
    prov = {"uri": uri, "tracking_uri": tracking.redact(store)}
    try:
        with tracking.quick_http():
            client = MlflowClient(tracking_uri=store, registry_uri=store)
            if uri.startswith("models:/"):
                rest = uri.removeprefix("models:/")
                if "@" in rest:
                    name, alias = rest.split("@", 1)
                    mv = client.get_model_version_by_alias(name, alias)
                    prov["alias"] = alias
                elif "/" in rest:
                    name, version = rest.rsplit("/", 1)
                    mv = client.get_model_version(name, version)
                else:
                    raise DistillopsError(
                        f"{key}: '{uri}' names no version; use models:/NAME@ALIAS or models:/NAME/VERSION"
                    )
                prov |= {
                    "name": name,
                    "version": str(mv.version),
                    "run_id": mv.run_id or "",
                    "resolved": f"models:/{name}/{mv.version}",
                }
                source = prov["resolved"]
            elif uri.startswith("runs:/"):
                run_id = uri.removeprefix("runs:/").split("/", 1)[0]
                client.get_run(run_id)
                prov |= {"run_id": run_id, "resolved": uri}
                source = uri
            else:
                raise DistillopsError(
                    f"{key}: '{uri}' is not an MLflow model URI; use models:/NAME@ALIAS, models:/NAME/VERSION or "
                    f"runs:/RUN_ID/PATH"
                )
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(into), tracking_uri=store
            )
    except DistillopsError:
        raise
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        what = str(exc).splitlines()[0][:300]
        if (
            "RESOURCE_DOES_NOT_EXIST" in str(code)
            or "not found" in what.lower()
            or "does not exist" in what.lower()
        ):
            raise DistillopsError(
                f"{key}: '{uri}' is not in the MLflow store {prov['tracking_uri']} ({what}); check the name, "
                f"alias or version (mlflow ui lists them)"
            ) from None
        raise DistillopsError(
            f"{key}: the MLflow store {prov['tracking_uri']} cannot be reached or read for '{uri}' ({what}); check "
            f"MLFLOW_TRACKING_URI and that the server is up"
        ) from None
    except Exception as exc:
        raise DistillopsError(
            f"{key}: the MLflow store {prov['tracking_uri']} cannot be reached or read for '{uri}' "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); check MLFLOW_TRACKING_URI "
            f"and that the server is up"
        ) from None
    return Path(local), prov


def _mlflow_files(folder: Path, key: str, uri: str) -> tuple[str, Path]:
    """What an MLflow model folder holds: ("onnx", file) or ("plugin", distillops model folder)."""
    if (folder / META).exists() and (folder / WEIGHTS).exists():
        return "plugin", folder
    mlmodel = folder / "MLmodel"
    if mlmodel.exists():
        import yaml

        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        if "onnx" in flavors:
            return "onnx", folder / flavors["onnx"].get("data", "model.onnx")
        for sub in sorted(folder.rglob(META)):
            if (sub.parent / WEIGHTS).exists():
                return "plugin", sub.parent
        if "pytorch" in flavors:
            raise DistillopsError(
                f"{key}: '{uri}' is a pickled PyTorch-flavour model: loading it would run code from the store, "
                f"which distillops never does. Log the teacher as ONNX (mlflow.onnx.log_model), or log its "
                f"state dict as model.safetensors with a distillops model.json (what the teacher stage logs), "
                f"or use teacher.source: {{weights: FILE, model: {{name: ...}}}}"
            )
        raise DistillopsError(
            f"{key}: '{uri}' has flavours {sorted(flavors)}; an ONNX or distillops model is needed"
        )
    onnx_files = sorted(folder.rglob("*.onnx"))
    if len(onnx_files) == 1:
        return "onnx", onnx_files[0]
    raise DistillopsError(f"{key}: '{uri}' holds no MLmodel, ONNX file or distillops model (model.json)")


# --- importing: the start-up check, then the outputs ------------------------------------------------------
@dataclass
class Member:
    """One imported teacher, checked and loaded: its module and what its folder records."""

    key: str
    spec: ImportedTeacher
    module: nn.Module
    kind: str  # plugin or onnx
    provenance: dict[str, str]
    describe: str
    selected: Selected | None = None  # plugin: the model plugin
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    adapter: InputAdapter | None = None
    onnx: tuple[Path, OnnxInfo] | None = None

    @property
    def features(self) -> bool:
        """Whether feature losses can tap it (a PyTorch model fed the data's own images)."""
        return self.kind == "plugin" and self.adapter is None


def check_source(source: TeacherSource, fmt: DataFormat, workdir: Path) -> list[Member]:
    """Load and check every imported teacher against the data's format ``fmt``; MLflow models are
    downloaded into ``workdir``. Fails naming the params key and the file or URI."""
    single = not source.ensemble
    return [
        _member("teacher.source" if single else f"teacher.source[{i}]", spec, fmt, workdir / str(i))
        for i, spec in enumerate(source.members)
    ]


def _member(key: str, spec: ImportedTeacher, fmt: DataFormat, workdir: Path) -> Member:
    if spec.kind == "weights":
        path = Path(spec.location)
        return _plugin_member(
            key,
            spec,
            fmt,
            path,
            {"kind": "weights", "path": str(path), "sha256": file_digest(path) if path.is_file() else ""},
            None,
        )
    if spec.kind == "onnx":
        path = Path(spec.location)
        from pipeline.weights import check_file

        check_file(path, f"{key}.onnx")
        return _onnx_member(
            key, spec, fmt, path, {"kind": "onnx", "path": str(path), "sha256": file_digest(path)}
        )
    workdir.mkdir(parents=True, exist_ok=True)
    folder, prov = resolve_mlflow(spec.location, f"{key}.mlflow", workdir)
    prov = {"kind": "mlflow", **prov}
    found, path = _mlflow_files(folder, f"{key}.mlflow", spec.location)
    if found == "onnx":
        return _onnx_member(key, spec, fmt, path, {**prov, "sha256": file_digest(path)})
    meta = read_json(path / META)
    model = dict(meta["model"])
    plugin_spec = spec.model or PluginSpec(model.pop("name"), model)
    data_kwargs = dict(meta.get("data_kwargs", {}))
    return _plugin_member(
        key,
        ImportedTeacher(spec.kind, spec.location, plugin_spec, spec.input, spec.output, spec.weight),
        fmt,
        path / WEIGHTS,
        {**prov, "sha256": file_digest(path / WEIGHTS)},
        (int(meta["in_channels"]), data_kwargs),
    )


def _plugin_member(
    key: str,
    spec: ImportedTeacher,
    fmt: DataFormat,
    path: Path,
    prov: dict[str, str],
    built_for: tuple[int, dict[str, Any]] | None,
) -> Member:
    """A state dict for a model plugin, built for the data's format or for ``spec.input``'s (or, from a
    distillops model folder, for what its sidecar says)."""
    selected = Selected.resolve(f"{key}.model", "models", spec.model)
    state = read_state_dict(path, f"{key}.{'weights' if spec.kind == 'weights' else 'mlflow'}")
    inp = spec.input or InputSpec()
    if built_for is not None:
        channels, data_kwargs = built_for
        size = int(data_kwargs.get("image_size", inp.image_size or fmt.height))
    else:
        channels = inp.channels or fmt.channels
        size = inp.image_size or fmt.height
        data_kwargs = dict(fmt.model_kwargs())
        data_kwargs["image_size"] = size
        if channels != fmt.channels:  # the data's statistics are for other channels: the plugin's own
            data_kwargs.pop("mean")
            data_kwargs.pop("std")
        if inp.mean is not None:
            data_kwargs["mean"] = inp.mean[0] if len(inp.mean) == 1 else list(inp.mean)
        if inp.std is not None:
            data_kwargs["std"] = inp.std[0] if len(inp.std) == 1 else list(inp.std)
    torch.manual_seed(0)  # the built model's random init is overwritten; seeded so nothing else moves
    model = selected.build_model(fmt.num_classes, channels, data_kwargs)
    load_into(model, state, f"{key}.{'weights' if spec.kind == 'weights' else 'mlflow'}", path)
    model.eval()
    adapter = InputAdapter(channels, (size, size), data_shape=fmt.shape)
    module: nn.Module = model if adapter.identity else Adapted(adapter, model)
    describe = f"{spec.model.describe()} from {path.name} (sha256 {prov['sha256'][:12]})" + (
        f", fed {channels}x{size}x{size} images" if not adapter.identity else ""
    )
    return Member(
        key,
        spec,
        module,
        "plugin",
        prov,
        describe,
        selected,
        selected.model_kwargs(data_kwargs),
        None if adapter.identity else adapter,
    )


def _onnx_member(
    key: str, spec: ImportedTeacher, fmt: DataFormat, path: Path, prov: dict[str, str]
) -> Member:
    info = inspect_onnx(path, key, spec.input, spec.output, fmt)
    module = OnnxTeacher(path, info, fmt.shape)
    try:
        with torch.no_grad():
            module(torch.zeros(2, *fmt.shape))
    except Exception as exc:
        raise DistillopsError(
            f"{key}: {path} fails on the data's images converted to {info.describe()}: {type(exc).__name__}: "
            f"{str(exc)[:300]}"
        ) from None
    describe = f"ONNX {path.name} (sha256 {prov['sha256'][:12]}): {info.describe()}"
    return Member(key, spec, module, "onnx", prov, describe, onnx=(path, info))


def assemble(members: Sequence[Member], source: TeacherSource) -> nn.Module:
    if not source.ensemble:
        return members[0].module
    return Ensemble([m.module for m in members], [m.spec.weight for m in members])


def write_teacher(
    out: Path, members: Sequence[Member], source: TeacherSource, fmt: DataFormat, extra: dict[str, Any]
) -> list[Path]:
    """The imported teacher in ``out`` (see the module's docstring); the files written."""
    if not source.ensemble:
        return _write_member(out, members[0], fmt, extra)
    written = []
    for i, m in enumerate(members):
        written += _write_member(out / MEMBERS / str(i), m, fmt, {"weight": m.spec.weight})
    meta = {
        "kind": "ensemble",
        "members": [{"folder": f"{MEMBERS}/{i}", "weight": m.spec.weight} for i, m in enumerate(members)],
        "num_classes": fmt.num_classes,
        "in_channels": fmt.channels,
        "parameters": sum(teacher_parameters(m.module) for m in members),
        **extra,
    }
    write_json(out / META, meta)
    return [*written, out / META]


def _write_member(out: Path, m: Member, fmt: DataFormat, extra: dict[str, Any]) -> list[Path]:
    common = {"source": m.provenance, **extra}
    if m.kind == "plugin":
        model = m.module.model if isinstance(m.module, Adapted) else m.module
        channels = m.adapter.channels if m.adapter is not None else fmt.channels
        if m.adapter is not None:
            common["input"] = m.adapter.describe()
        save_model(
            out, model, m.spec.model, fmt.num_classes, channels, m.selected.info, common, m.data_kwargs
        )
        return [out / WEIGHTS, out / META]
    path, info = m.onnx
    write_with(out / ONNX_FILE, lambda tmp: _self_contained(path, tmp))
    write_json(
        out / META,
        {
            "kind": "onnx",
            "file": ONNX_FILE,
            "onnx": info.to_json(),
            "num_classes": fmt.num_classes,
            "in_channels": fmt.channels,
            "parameters": info.parameters,
            **common,
        },
    )
    return [out / ONNX_FILE, out / META]


def _self_contained(path: Path, dest: Path) -> None:
    """``path`` copied to ``dest`` as it is, or, when its weights lie in external data files (as
    ``mlflow.onnx.log_model`` saves them), as one file holding them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if not external:
        shutil.copyfile(path, dest)
        return
    onnx.save(onnx.load(str(path)), str(dest), save_as_external_data=False)


# --- reading a teacher back -----------------------------------------------------------------------------
def load_teacher(
    folder: Path, device: torch.device | str = "cpu", data_shape: tuple[int, int, int] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher in ``folder`` (trained or imported, any kind) as a module taking the data's images."""
    if not (folder / META).exists():
        raise DistillopsError(f"{folder} holds no teacher ({META}); run the teacher stage")
    meta = read_json(folder / META)
    kind = meta.get("kind", "plugin")
    if kind == "ensemble":
        members = [load_teacher(folder / m["folder"], device, data_shape)[0] for m in meta["members"]]
        return Ensemble(members, [m["weight"] for m in meta["members"]]).to(device).eval(), meta
    if kind == "onnx":
        return OnnxTeacher(folder / meta["file"], OnnxInfo.from_json(meta["onnx"]), data_shape).eval(), meta
    model, meta = load_model(folder, device)
    if "input" in meta:
        inp = meta["input"]
        adapter = InputAdapter(inp["channels"], tuple(inp["image_size"]), inp["mean"], inp["std"], data_shape)
        model = Adapted(adapter, model).to(device).eval()
    return model, meta


def capabilities(meta: Mapping[str, Any]) -> dict[str, bool]:
    """What a saved teacher allows: ``features`` (feature losses can tap it: a PyTorch model fed the data's
    own images) and ``plugin`` (a model plugin that can be copied, adapted and exported)."""
    kind = meta.get("kind", "plugin")
    plain = kind == "plugin" and "input" not in meta
    return {"features": plain, "plugin": plain}


def describe_kind(meta: Mapping[str, Any]) -> str:
    kind = meta.get("kind", "plugin")
    if kind == "ensemble":
        return f"an ensemble of {len(meta['members'])}"
    if kind == "onnx":
        return "an ONNX model"
    return "a model fed converted images" if "input" in meta else "a PyTorch model"


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="distillops-teacher-")
