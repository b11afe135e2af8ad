"""Saving and loading trained models: weights as safetensors (no pickle), a JSON sidecar saying how
to rebuild the architecture through the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import read_json, write_json, write_with
from pipeline.errors import DistillopsError
from pipeline.layout import META, WEIGHTS
from pipeline.params import PluginSpec
from pipeline.registry import PluginInfo
from pipeline.selection import Selected


def save_model(
    folder: Path,
    model: nn.Module,
    spec: PluginSpec,
    num_classes: int,
    in_channels: int,
    info: PluginInfo,
    extra: dict[str, Any] | None = None,
    data_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Weights and sidecar; ``data_kwargs`` are the keywords the model was built with from the data
    (image size, normalisation), so that :func:`load_model` builds the same architecture."""
    save_weights(folder / WEIGHTS, model)
    write_json(
        folder / META,
        {
            "model": {"name": spec.name, **dict(spec.kwargs)},
            "num_classes": num_classes,
            "in_channels": in_channels,
            "data_kwargs": data_kwargs or {},
            "plugin": info.provenance,
            "parameters": count_parameters(model),
            **(extra or {}),
        },
    )
    return folder / WEIGHTS


def save_weights(path: Path, module: nn.Module) -> Path:
    """A module's state dict as safetensors, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return write_with(path, lambda tmp: save_file(state, str(tmp)))


def load_model(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    from safetensors.torch import load_file

    if not (folder / WEIGHTS).exists() or not (folder / META).exists():
        raise DistillopsError(
            f"{folder} holds no saved model ({WEIGHTS} + {META}); run the stage that makes it."
        )
    meta = read_json(folder / META)
    spec_raw = dict(meta["model"])
    spec = PluginSpec(spec_raw.pop("name"), spec_raw)
    model = Selected.resolve(str(folder / META), "models", spec).build_model(
        meta["num_classes"], meta["in_channels"], meta.get("data_kwargs", {})
    )
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), meta


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
