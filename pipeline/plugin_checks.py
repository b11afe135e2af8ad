"""Contract checks for one plugin, run by ``distillops plugins check`` and by the test suite over every
discovered plugin, so a third party's plugin is checked the moment it is installed.

Each check builds the plugin with its default keywords and returns a list of problems (empty: passes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import DistillopsError
from pipeline.protocols import LossInputs, requires_teacher, student_taps, teacher_taps
from pipeline.registry import PluginInfo

BATCH, CLASSES = 8, 10


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 1, 28, 28, generator=g)
    y = F.one_hot(torch.randint(0, CLASSES, (BATCH,), generator=g), CLASSES).float()
    return x, y


def check_augmenter(info: PluginInfo) -> list[str]:
    aug = info.load()()
    x, y = _inputs()
    out1 = aug(x.clone(), y.clone(), torch.Generator().manual_seed(123))
    out2 = aug(x.clone(), y.clone(), torch.Generator().manual_seed(123))
    problems = []
    if not (isinstance(out1, tuple) and len(out1) == 2):
        return [f"must return a tuple (x, y), returned {type(out1).__name__}"]
    (xa, ya), (xb, yb) = out1, out2
    if xa.shape != x.shape or xa.dtype != x.dtype or xa.device != x.device:
        problems.append(f"x changed shape/dtype/device: {tuple(xa.shape)} {xa.dtype} {xa.device}")
    if ya.shape != y.shape or ya.dtype != y.dtype or ya.device != y.device:
        problems.append(f"y changed shape/dtype/device: {tuple(ya.shape)} {ya.dtype} {ya.device}")
    if not (torch.equal(xa, xb) and torch.equal(ya, yb)):
        problems.append("the same generator seed gave different outputs (randomness not from g)")
    if not torch.allclose(ya.sum(1), torch.ones(BATCH), atol=1e-5) or (ya < 0).any():
        problems.append("label rows are no longer probability vectors")
    if xa.numel() and (xa.min() < -1e-6 or xa.max() > 1 + 1e-6):
        problems.append(f"pixels left [0, 1]: range [{float(xa.min()):.3f}, {float(xa.max()):.3f}]")
    return problems


def _params_up_to(
    model: torch.nn.Module, x: torch.Tensor, names: tuple[str, ...]
) -> list[torch.nn.Parameter]:
    """The parameters of the modules that finish their forward no later than the last of the named
    modules (the tapped modules themselves and everything computed before them)."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_a, name=name: order.append(name))
        for name, m in model.named_modules()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    last = max((i for i, name in enumerate(order) if name in names), default=-1)
    modules = dict(model.named_modules())
    return [p for name in dict.fromkeys(order[: last + 1]) for p in modules[name].parameters(recurse=False)]


def check_loss(info: PluginInfo) -> list[str]:
    from plugins.models import LeNet5 as lenet5
    from plugins.models import ResNet8 as resnet8

    loss = info.load()()
    x, y = _inputs()
    student, teacher = lenet5(CLASSES, 1), resnet8(CLASSES, 1).eval()
    s_taps, t_taps = student_taps(loss), teacher_taps(loss)
    from pipeline.loss_set import feature_taps

    try:
        with feature_taps(student, s_taps) as sf, feature_taps(teacher, t_taps) as tf:
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            inputs = LossInputs(
                s_logits, t_logits if requires_teacher(loss) else None, y, y.argmax(1), sf, tf
            )
            value = loss(inputs)
    except DistillopsError as exc:
        return [f"cannot run on the built-in lenet5/resnet8 pair: {exc}"]
    problems = []
    if not torch.is_tensor(value) or value.dim() != 0:
        return [f"must return a scalar tensor, returned {type(value).__name__} {getattr(value, 'shape', '')}"]
    if not torch.isfinite(value):
        problems.append(f"loss is not finite: {float(value)}")
    value.backward()
    if student.fc.weight.grad is None and not s_taps:
        problems.append("no gradient reaches the student's logits")
    if s_taps and not any(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in _params_up_to(student, x, s_taps)
    ):
        problems.append(f"no gradient reaches the student's tapped features {list(s_taps)}")
    if requires_teacher(loss) and not s_taps and not t_taps:
        # on labels the teacher agrees with, so that a loss with a label term (e.g. nkd) may be checked too
        agreed = t_logits.argmax(1)
        rows = torch.nn.functional.one_hot(agreed, CLASSES).float()
        same = loss(LossInputs(t_logits.clone(), t_logits, rows, agreed))
        other = loss(LossInputs(t_logits.flip(0), t_logits, rows, agreed))
        if not float(same) <= float(other) + 1e-6:
            problems.append(
                f"student == teacher does not give the smaller loss ({float(same):.4g} vs {float(other):.4g})"
            )
    return problems


def check_model(info: PluginInfo, onnx: bool = True) -> list[str]:
    model = info.load()(num_classes=CLASSES, in_channels=1)
    if not isinstance(model, torch.nn.Module):
        return [f"factory returned {type(model).__name__}, not a torch.nn.Module"]
    model.eval()
    x, _ = _inputs()
    with torch.no_grad():
        out = model(x)
    if out.shape != (BATCH, CLASSES):
        return [f"logits of shape {tuple(out.shape)}, expected {(BATCH, CLASSES)}"]
    if not onnx:
        return []
    from pipeline.onnx_model import check_parity, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx", x[:2], 18)
        images = (torch.rand(32, 1, 28, 28) * 255).to(torch.uint8).numpy()
        try:
            check_parity(model, path, images, (1, 7, 32), 1e-4)
        except DistillopsError as exc:
            return [str(exc)]
    return []


CHECKS = {"augmenters": check_augmenter, "losses": check_loss, "models": check_model}


def check_plugin(info: PluginInfo) -> list[str]:
    try:
        return CHECKS[info.group](info)
    except DistillopsError as exc:
        return [str(exc)]
    except Exception as exc:
        return [f"raised {type(exc).__name__}: {exc}"]
