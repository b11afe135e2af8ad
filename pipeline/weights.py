"""Weights someone else trained: state dicts read from ``.safetensors`` or ``.pt``/``.pth`` files (never
by unpickling code), matched to a model key by key and shape, and the starting points of training
(``teacher.init``, ``student.init``), torchvision's pretrained weights among them (from the local torch hub
cache; downloaded only when params allow it)."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import DistillopsError
from pipeline.params import InitParams

SAFETENSORS = (".safetensors",)
PICKLED = (".pt", ".pth", ".bin")
SHOWN = 4  # how many mismatched keys a message names


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, key: str) -> None:
    if not path.exists():
        raise DistillopsError(
            f"{key}: {path} does not exist; check the path (relative to the repository root)"
        )
    if not path.is_file():
        raise DistillopsError(f"{key}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise DistillopsError(f"{key}: {path} cannot be read (permission denied)")


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name; a checkpoint that wraps them (``state_dict``, ``model``,
    ``model_state_dict``) is unwrapped and a ``module.`` prefix (DistributedDataParallel) dropped."""
    check_file(path, key)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS:
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path))
        except Exception as exc:
            raise DistillopsError(
                f"{key}: {path} cannot be read as safetensors ({type(exc).__name__}: {exc}); the file is "
                f"corrupt, truncated or not a safetensors file"
            ) from None
    elif suffix in PICKLED:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f"it holds a pickled {found.group(1)}" if found else "it holds pickled objects"
            raise DistillopsError(
                f"{key}: {path} cannot be loaded as weights only: loading it would unpickle code "
                f"({what}). distillops never runs code from a weights file "
                f"(torch.load(weights_only=True)); the file probably holds a whole pickled model. Where "
                f"you trust it, save its state dict once: torch.save(model.state_dict(), 'weights.pt') "
                f"or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
            ) from None
        except Exception as exc:
            raise DistillopsError(
                f"{key}: {path} cannot be read by torch.load ({type(exc).__name__}: {exc}); the file is "
                f"corrupt, truncated or not a PyTorch file"
            ) from None
    else:
        raise DistillopsError(
            f"{key}: {path} has the suffix '{path.suffix}'; weights are read from "
            f"{', '.join(SAFETENSORS + PICKLED)} files (a state dict)"
        )
    state = _unwrap(raw)
    if state is None:
        raise DistillopsError(
            f"{key}: {path} holds a {type(raw).__name__}, not a state dict (names to tensors); save "
            f"model.state_dict()"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _unwrap(raw: object) -> dict[str, torch.Tensor] | None:
    if not isinstance(raw, Mapping):
        return None
    if raw and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        return dict(raw)
    for inner in ("state_dict", "model_state_dict", "model"):
        if inner in raw:
            found = _unwrap(raw[inner])
            if found is not None:
                return found
    return None


def head_name(model: nn.Module) -> str | None:
    """The classifier: the model's last ``nn.Linear`` (in ``named_modules`` order)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def load_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    key: str,
    path: Path | str,
    starting_point: bool = False,
) -> list[str]:
    """Copy ``state`` into ``model``. Imported as is (``starting_point`` False): every key and shape must
    match. As a starting point: a head of another class count is left fresh and an RGB first convolution
    is summed to the model's one grey channel. Returns the messages saying what was not copied as is."""
    own = model.state_dict()
    head = head_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head is not None else set()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    differ = [k for k in own if k in state and _shape(state[k]) != _shape(own[k])]
    notes: list[str] = []
    merged = dict(own)
    w = f"{head}.weight"
    head_classes = w in differ and _shape(state[w])[0] != _shape(own[w])[0]
    if head_classes and set(differ) <= head_keys and not (missing or unexpected) and not starting_point:
        raise DistillopsError(
            f"{key}: {path}: its classifier '{head}' has {_shape(state[w])[0]} outputs (classes) and the "
            f"data has {_shape(own[w])[0]} classes; a teacher used as is must know the data's classes "
            f"(to start training from these weights instead, use teacher.init)"
        )
    if starting_point:
        fresh = [k for k in differ if k in head_keys]
        if fresh:
            notes.append(
                f"the head '{head}' ({_shape(state[f'{head}.weight'])[0]} outputs in the file) is replaced by "
                f"a fresh one for {_shape(own[f'{head}.weight'])[0]} classes"
            )
        for k in [k for k in differ if k not in fresh]:
            src, dst = _shape(state[k]), _shape(own[k])
            if len(src) == 4 and src[1] == 3 and dst[1] == 1 and src[0] == dst[0] and src[2:] == dst[2:]:
                merged[k] = state[k].sum(1, keepdim=True)  # grey x replicated to RGB gives the same output
                notes.append(
                    f"'{k}' takes RGB input in the file: its 3 input channels are summed for grey images"
                )
                fresh.append(k)
        differ = [k for k in differ if k not in fresh]
        missing = [k for k in missing if k not in head_keys]
    problems = []
    if missing:
        problems.append(
            f"missing in the file: {missing[:SHOWN]}"
            + (f" ({len(missing)} in all)" if len(missing) > SHOWN else "")
        )
    if unexpected:
        problems.append(
            f"not in the model: {unexpected[:SHOWN]}"
            + (f" ({len(unexpected)} in all)" if len(unexpected) > SHOWN else "")
        )
    if differ:
        shown = ", ".join(f"{k}: file {_shape(state[k])} vs model {_shape(own[k])}" for k in differ[:SHOWN])
        problems.append(
            f"shapes differ: {shown}" + (f" ({len(differ)} in all)" if len(differ) > SHOWN else "")
        )
    if problems:
        raise DistillopsError(
            f"{key}: {path} does not fit the model: {'; '.join(problems)}. Are these weights for this "
            f"model plugin with the same keywords (and input channels)?"
        )
    for k, value in state.items():
        if k in own and _shape(value) == _shape(own[k]):
            merged[k] = value
    model.load_state_dict(merged)
    return notes


def is_path(weights: str) -> bool:
    return "/" in weights or os.sep in weights or Path(weights).suffix.lower() in SAFETENSORS + PICKLED


def torchvision_weights(
    arch: str, name: str, key: str, download: bool
) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of torchvision's pretrained weights ``name`` for ``arch``, from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``); fetched only when ``download`` allows it."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except Exception as exc:
        raise DistillopsError(f"{key}: torchvision has no pretrained weights for '{arch}' ({exc})") from None
    short = name.split(".")[-1]
    names = [w.name for w in enum]
    if short == "DEFAULT":
        weights = enum.DEFAULT
    elif short in names:
        weights = enum[short]
    else:
        raise DistillopsError(
            f"{key}: '{name}' is not a torchvision weights name of {arch}; known: {', '.join(names)}"
        )
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not file.exists():
        if not download:
            raise DistillopsError(
                f"{key}: torchvision weights {arch} {weights.name} need the file {file.name} in {file.parent} "
                f"(the local torch hub cache; TORCH_HOME moves it), which is not there. Copy it there from "
                f"a machine that has it (it is published at {weights.url}), or set {key}.download: true to "
                f"allow the download"
            )
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(file))
    return read_state_dict(file, key), file


def apply_init(
    model: nn.Module, init: InitParams, key: str, plugin: str, kwargs: Mapping[str, object]
) -> dict[str, str]:
    """Start ``model`` (built by the model plugin ``plugin`` with ``kwargs``) from ``init``'s weights;
    prints what was not copied as is. Returns what the run records of it (file, digest)."""
    if plugin == "torchvision" and not is_path(init.weights):
        net = getattr(model, "net", None)
        if net is None:
            raise DistillopsError(f"{key}: the torchvision model has no 'net' module to load weights into")
        state, file = torchvision_weights(
            str(kwargs.get("arch", "")), init.weights, f"{key}.weights", init.download
        )
        notes = load_into(net, state, f"{key}.weights", file, starting_point=True)
        record = {"init": f"torchvision {init.weights}", "init.file": str(file)}
    else:
        path = Path(init.weights)
        state = read_state_dict(path, f"{key}.weights")
        notes = load_into(model, state, f"{key}.weights", path, starting_point=True)
        record = {"init": f"weights {path}", "init.file": str(path), "init.sha256": file_digest(path)}
    stage = {"teacher": "teacher", "student": "distill"}.get(key.split(".")[0], key.split(".")[0])
    print(f"[{stage}] {key}: starting from {record['init']}" + "".join(f"; {n}" for n in notes))
    return record
