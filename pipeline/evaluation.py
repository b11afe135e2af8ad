"""Inference and scores shared by the training stages and ``evaluate``: logits of a model over uint8
images, accuracy, confusion matrix. Nothing here knows about losses or training, so a stage that only
measures models (``evaluate``) does not depend on the training code."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from pipeline.data import to_float
from pipeline.distributed import SINGLE, Group


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """Mixed precision for a forward pass (``dtype`` bfloat16 or float16), or nothing at all (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    memory_format: torch.memory_format = torch.contiguous_format,
    amp_dtype: torch.dtype | None = None,
    group: Group = SINGLE,
) -> torch.Tensor:
    """Logits (float32) for uint8 images ``x`` (on any device), in eval mode; returned on the CPU.

    With several training processes (``group``), each computes its :meth:`~Group.shard` of the rows and
    every process gets all of them back."""
    was_training = model.training
    model.eval()
    rows = group.shard(len(x)) if group.distributed else slice(0, len(x))
    part = x[rows]
    with autocast(device, amp_dtype):
        out = [
            model(to_float(part[i : i + batch_size].to(device)).contiguous(memory_format=memory_format))
            .float()
            .cpu()
            for i in range(0, len(part), batch_size)
        ]
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    return group.gather_rows(logits, len(x)) if group.distributed else logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
