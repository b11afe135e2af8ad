"""The one training loop shared by the teacher, distill and transfer stages.

The loop owns what every stage needs: batching from in-memory uint8 tensors, batched augmentation,
an optional frozen teacher (its logits cached once when the inputs never change), feature taps for
losses that need intermediate outputs, a weighted sum of named loss terms, per-epoch validation,
NaN guards, and checkpoints that carry everything a bit-identical resume needs (model, loss modules,
optimizer, scheduler, RNG states, position in the epoch and the metric accumulators).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import interrupts
from pipeline.atomic import write_with
from pipeline.data import Split
from pipeline.errors import DistillopsError, PluginError, TrainingDiverged
from pipeline.offline_copies import AugmentedCopies
from pipeline.params import LossSpec, PluginSpec, RuntimeParams, TrainParams
from pipeline.protocols import LossInputs, requires_teacher, student_taps, teacher_taps
from pipeline.registry import PluginInfo, create


def resolve_device(runtime: RuntimeParams) -> torch.device:
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise DistillopsError(
            "runtime.device is 'cuda' but no CUDA device is available; set it to 'auto' or 'cpu'."
        )
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def setup_runtime(runtime: RuntimeParams, seed: int) -> torch.device:
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    return resolve_device(runtime)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the models' input contract)."""
    return x.float().div_(255.0)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).float()


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
                f"'{self.stage}': {type(exc).__name__}: {exc}"
            ) from exc


@dataclass
class LossTerm(Plugin):
    weight: float = 1.0


def build_augmenters(specs: Sequence[PluginSpec], stage: str) -> list[Plugin]:
    return [Plugin(*create("augmenters", spec), stage, spec=spec) for spec in specs]


def build_losses(specs: Sequence[LossSpec], stage: str) -> list[LossTerm]:
    return [LossTerm(*create("losses", spec), stage, spec.weight, spec=spec) for spec in specs]


def plugin_tags(plugins: Sequence[Plugin]) -> dict[str, str]:
    return {p.info.tag: p.info.provenance for p in plugins}


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


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """Logits for uint8 images ``x`` (on CPU), in eval mode; returned on CPU."""
    was_training = model.training
    model.eval()
    out = [
        model(to_float(x[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _make_optimizer(params: list[dict[str, Any]], cfg: TrainParams) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainParams, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate factor: one-cycle (linear warm-up over the first quarter, then cosine
    decay to zero), cosine decay, or constant. Works for any number of steps, even one."""
    warm = max(1, steps // 4) if cfg.schedule == "onecycle" else 0
    decay = max(1, steps - warm)

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, decay) / decay))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def digest(tensors: Iterator[torch.Tensor] | Sequence[torch.Tensor]) -> str:
    """sha256 of the tensors' bytes, in order (a fingerprint of weights or data)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())  # any dtype
        h.update(str(tuple(t.shape)).encode())
    return h.hexdigest()[:16]


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _has_lazy(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and any(
        isinstance(p, nn.parameter.UninitializedParameter) for p in obj.parameters()
    )


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    resumed_from: int | None = None


@dataclass
class Trainer:
    """Trains ``model`` on ``train`` with a weighted sum of loss terms, validating on ``val``."""

    stage: str
    model: nn.Module
    losses: list[LossTerm]
    cfg: TrainParams
    device: torch.device
    seed: int
    num_classes: int
    augmenters: list[Plugin] = field(default_factory=list)
    teacher: nn.Module | None = None
    checkpoint: Path | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    progress: bool = True
    run_label: str = ""
    channels_last: bool = False
    # learning-rate multiplier per parameter name (e.g. a smaller one for transferred layers)
    lr_scale: Callable[[str], float] | None = None
    # offline augmentation: K materialised copies of the training split, used in turn per epoch
    copies: AugmentedCopies | None = None

    def __post_init__(self) -> None:
        self.teacher_passes = 0  # full passes of the teacher over a training view (cached logits)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.loss_modules = nn.ModuleList([t.obj for t in self.losses if isinstance(t.obj, nn.Module)]).to(
            self.device
        )
        needs_teacher = [t.info.name for t in self.losses if requires_teacher(t.obj)]
        if needs_teacher and self.teacher is None:
            raise PluginError(
                f"loss(es) {needs_teacher} need a teacher, but stage '{self.stage}' has none; "
                f"use losses that do not need one (e.g. ce) here."
            )
        if self.teacher is not None:
            self.teacher.to(self.device, memory_format=self.memory_format).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.s_taps = tuple(dict.fromkeys(n for t in self.losses for n in student_taps(t.obj)))
        self.t_taps = tuple(dict.fromkeys(n for t in self.losses for n in teacher_taps(t.obj)))

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters of the model and of the loss modules, grouped by learning rate."""
        groups: dict[float, list[nn.Parameter]] = {}
        named = [
            *self.model.named_parameters(),
            *(("loss." + n, p) for n, p in self.loss_modules.named_parameters()),
        ]
        for name, param in named:
            if param.requires_grad:
                scale = self.lr_scale(name) if self.lr_scale is not None else 1.0
                groups.setdefault(float(scale), []).append(param)
        return [{"params": params, "lr": self.cfg.lr * scale} for scale, params in groups.items()]

    def _materialise_lazy(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        """Loss modules built from lazy layers (e.g. a FitNets regressor sized from the features it
        sees) get their parameters from one forward pass on two training images, before the optimizer
        is built; the models run in eval mode so no BatchNorm statistics move."""
        lazy = [t for t in self.losses if _has_lazy(t.obj)]
        if not lazy:
            return
        modes = [(m, m.training) for m in (self.model, self.teacher) if m is not None]
        for m, _ in modes:
            m.eval()
        xb = to_float(x[:2].to(self.device)).contiguous(memory_format=self.memory_format)
        tb = targets[:2].to(self.device)
        try:
            with (
                torch.no_grad(),
                feature_taps(self.teacher, self.t_taps) as t_feats,
                feature_taps(self.model, self.s_taps) as s_feats,
            ):
                t_logits = self.teacher(xb) if self.teacher is not None else None
                inputs = LossInputs(self.model(xb), t_logits, tb, tb.argmax(1), s_feats, t_feats)
                for term in lazy:
                    term(inputs)
        finally:
            for m, was_training in modes:
                m.train(was_training)
        self.loss_modules.to(self.device)

    # --- checkpoints -------------------------------------------------------------------------------
    def _state(
        self,
        epoch: int,
        step: int,
        history: list,
        acc: dict,
        g: torch.Generator,
        opt: torch.optim.Optimizer,
        sched: Any,
        key: str,
    ) -> dict[str, Any]:
        return {
            "key": key,
            "epoch": epoch,
            "step": step,
            "model": self.model.state_dict(),
            "loss_modules": self.loss_modules.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "aug_rng": g.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": json.dumps(history),
            "acc": json.dumps(acc),
        }

    def _save(self, state: dict[str, Any]) -> None:
        if self.checkpoint is not None:
            write_with(self.checkpoint, lambda tmp: torch.save(state, tmp))

    def _load(self, key: str) -> dict[str, Any] | None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            print(f"[{self.stage}] ignoring unreadable checkpoint {self.checkpoint}: {exc}")
            return None
        if state.get("key") != key:
            print(f"[{self.stage}] checkpoint {self.checkpoint} is for other settings; starting afresh")
            return None
        return state

    # --- the loop ----------------------------------------------------------------------------------
    def fit(self, train: Split, val: Split) -> TrainResult:
        """Train on ``train``, or, with offline augmentation, on copy ``epoch mod K`` of ``self.copies``."""
        cfg, device, copies = self.cfg, self.device, self.copies
        if copies is not None and self.augmenters:
            raise DistillopsError(
                f"stage '{self.stage}': offline copies and online augmenters are exclusive; pick one "
                f"with augment.mode"
            )
        if copies is not None:
            views = [
                (torch.from_numpy(x), torch.from_numpy(t)) for x, t in map(copies.copy, range(len(copies)))
            ]
        else:
            views = [(torch.from_numpy(train.x), one_hot(torch.from_numpy(train.y), self.num_classes))]
        n = len(views[0][1])
        if n == 0:
            raise DistillopsError(f"stage '{self.stage}': the training split is empty")
        batches_per_epoch = math.ceil(n / cfg.batch_size)
        self._materialise_lazy(*views[0])
        opt = _make_optimizer(self._param_groups(), cfg)
        sched = _make_scheduler(opt, cfg, cfg.epochs * batches_per_epoch)
        g = torch.Generator(device=device).manual_seed(self.seed)
        key = config_hash(
            {
                "stage": self.stage,
                "run": self.run_label,
                "cfg": cfg.__dict__,
                "seed": self.seed,
                "n": n,
                "losses": [(t.describe(), t.weight) for t in self.losses],
                "augment": [a.describe() for a in self.augmenters],
                "copies": len(views) if copies is not None else 0,
                # a checkpoint only resumes the same architecture, teacher and training data
                "model": [(k, tuple(v.shape)) for k, v in self.model.state_dict().items()],
                "teacher": digest(t.detach() for t in self.teacher.state_dict().values())
                if self.teacher
                else "",
                "data": digest(t for view in views for t in view),
            }
        )
        history: list[dict[str, float]] = []
        start_epoch, start_step, acc = 0, 0, {}
        resumed = None
        state = self._load(key)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.loss_modules.load_state_dict(state["loss_modules"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            g.set_state(state["aug_rng"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"]:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            start_epoch, start_step = state["epoch"], state["step"]
            history, acc = json.loads(state["history"]), json.loads(state["acc"])
            resumed = start_epoch
            print(
                f"[{self.stage}] resuming {self.run_label or 'training'} from epoch {start_epoch + 1}, "
                f"batch {start_step}"
            )

        # when the inputs are fixed (no online augmentation, no teacher features), one teacher pass per
        # training view (the split, or each offline copy) serves every epoch that uses it
        cache_teacher = self.teacher is not None and not self.augmenters and not self.t_taps
        teacher_cache: dict[int, torch.Tensor] = {}
        self.teacher_passes = 0

        t0 = time.perf_counter()
        with interrupts.deferred():
            for epoch in range(start_epoch, cfg.epochs):
                self.model.train()
                view = epoch % len(views)
                x_all, t_all = views[view]
                cached_teacher = None
                if cache_teacher:
                    if view not in teacher_cache:
                        teacher_cache[view] = predict_logits(self.teacher, x_all, device)
                        self.teacher_passes += 1
                    cached_teacher = teacher_cache[view]
                perm = _epoch_permutation(n, self.seed, epoch)
                if not acc:
                    acc = {"loss": 0.0, "correct": 0, "seen": 0}
                bar = _progress(
                    self.progress and not interrupts.pending(),
                    batches_per_epoch,
                    start_step,
                    f"{self.stage} {self.run_label} epoch {epoch + 1}/{cfg.epochs}".replace("  ", " "),
                )
                for step in range(start_step, batches_per_epoch):
                    idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    self._step(x_all[idx], t_all[idx], idx, g, opt, sched, acc, cached_teacher)
                    bar.update(1)
                    if interrupts.pending() is not None:
                        bar.close()
                        self._save(self._state(epoch, step + 1, history, acc, g, opt, sched, key))
                        print(
                            f"[{self.stage}] interrupted: checkpoint saved at epoch {epoch + 1}, "
                            f"batch {step + 1} -> {self.checkpoint}"
                        )
                        interrupts.check()
                bar.close()
                start_step = 0
                val_logits = predict_logits(self.model, torch.from_numpy(val.x), device)
                val_labels = torch.from_numpy(val.y)
                metrics = {
                    "train_loss": acc["loss"] / max(acc["seen"], 1),
                    "train_accuracy": acc["correct"] / max(acc["seen"], 1),
                    "val_loss": float(F.cross_entropy(val_logits, val_labels)),
                    "val_accuracy": accuracy(val_logits, val_labels),
                    "lr": opt.param_groups[0]["lr"],
                    **{k: v / max(acc["seen"], 1) for k, v in acc.items() if k.startswith("loss_")},
                }
                history.append({"epoch": epoch + 1, **metrics})
                acc = {}
                print(
                    f"[{self.stage}] {self.run_label + ' ' if self.run_label else ''}epoch {epoch + 1}/{cfg.epochs} "
                    f"train_loss {metrics['train_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f}",
                    flush=True,
                )
                if self.on_epoch is not None:
                    self.on_epoch(epoch + 1, metrics)
                self._save(self._state(epoch + 1, 0, history, acc, g, opt, sched, key))
                interrupts.check()
        if cache_teacher:
            print(
                f"[{self.stage}] {self.run_label + ' ' if self.run_label else ''}teacher logits: "
                f"{self.teacher_passes} passes for {cfg.epochs - start_epoch} epochs "
                f"({len(views)} training view{'s' if len(views) > 1 else ''})"
            )
        return TrainResult(history, time.perf_counter() - t0, resumed)

    def _step(
        self,
        xb: torch.Tensor,
        tb: torch.Tensor,
        idx: torch.Tensor,
        g: torch.Generator,
        opt: torch.optim.Optimizer,
        sched: Any,
        acc: dict,
        cached_teacher: torch.Tensor | None,
    ) -> None:
        device = self.device
        x = to_float(xb.to(device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        targets = tb.to(device)
        for aug in self.augmenters:
            x, targets = aug(x, targets, g)
        labels = targets.argmax(1)
        with (
            feature_taps(self.teacher, self.t_taps) as t_feats,
            feature_taps(self.model, self.s_taps) as s_feats,
        ):
            t_logits = None
            if cached_teacher is not None:
                t_logits = cached_teacher[idx].to(device)
            elif self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
            logits = self.model(x)
            inputs = LossInputs(logits, t_logits, targets, labels, s_feats, t_feats)
            total = torch.zeros((), device=device)
            terms = {}
            for term in self.losses:
                value = term(inputs)
                if not torch.is_tensor(value) or value.dim() != 0:
                    raise PluginError(
                        f"losses plugin '{term.info.name}' ({term.info.provenance}) returned "
                        f"{type(value).__name__} of shape {getattr(value, 'shape', '?')} in stage "
                        f"'{self.stage}'; a loss must return a scalar tensor"
                    )
                key = term.info.name if term.info.name not in terms else f"{term.info.name}_{len(terms) + 1}"
                terms[key] = value
                total = total + term.weight * value
        if not torch.isfinite(total):
            bad = {k: float(v.detach()) for k, v in terms.items()}
            raise TrainingDiverged(
                f"stage '{self.stage}': the loss became {float(total.detach())} (terms: {bad}); "
                f"training stopped before the update, no checkpoint was written with it. "
                f"Lower the learning rate or check the loss plugins."
            )
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        b = len(tb)
        acc["loss"] += float(total.detach()) * b
        acc["correct"] += int((logits.argmax(1) == labels).sum())
        acc["seen"] += b
        for name, value in terms.items():
            acc[f"loss_{name}"] = acc.get(f"loss_{name}", 0.0) + float(value.detach()) * b


class _NoBar:
    def update(self, _n: int) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)


def history_csv(history: Sequence[Mapping[str, float]]) -> str:
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join(_fmt(row.get(k, "")) for k in keys))
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
