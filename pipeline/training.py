"""The one training loop shared by the teacher, distill and transfer stages.

:class:`Trainer` owns what every stage needs: batching from in-memory uint8 tensors, batched
augmentation, an optional frozen teacher (its logits cached once per training view when the inputs never
change), the loss set, per-epoch validation, and checkpoints that carry everything a bit-identical resume
needs (model, loss modules, optimizer, scheduler, RNG states, position in the epoch and the metric sums).

The hot path (:meth:`Trainer._step`) reads one small tensor back to the host per step: the loss readings
and the count of correct predictions, which serve both the non-finite-loss guard and the running metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import batches, distributed, interrupts, layout
from pipeline.atomic import write_with
from pipeline.batches import Placement
from pipeline.data import Split, to_float
from pipeline.distributed import SINGLE, Group
from pipeline.errors import DistillopsError
from pipeline.evaluation import accuracy, autocast, predict_logits
from pipeline.loss_set import LossSet, feature_taps
from pipeline.offline_copies import AugmentedCopies
from pipeline.params import Optimizer, RuntimeParams, Schedule, TrainParams
from pipeline.protocols import LossInputs
from pipeline.selection import Plugin


def resolve_device(runtime: RuntimeParams, group: Group = SINGLE) -> torch.device:
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise DistillopsError(
            "runtime.device is 'cuda' but no CUDA device is available; set it to 'auto' or 'cpu'."
        )
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if runtime.device == "auto" else runtime.device
    if kind == "cuda" and group.distributed:  # one GPU per process of this machine
        return torch.device("cuda", group.local_rank)
    return torch.device(kind)


def device_kind(runtime: RuntimeParams) -> str:
    if runtime.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return runtime.device


def setup_runtime(runtime: RuntimeParams, seed: int) -> torch.device:
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    return resolve_device(runtime, distributed.from_environment(device_kind(runtime)))


AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how a stage's trainers run."""

    device: torch.device
    seed: int
    num_classes: int
    channels_last: bool = False
    progress: bool = True
    eval_batch_size: int = 256
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast
    compile: bool = False  # torch.compile the models' forward
    group: Group = SINGLE  # the training processes (one, or torchrun's)

    @classmethod
    def from_params(cls, runtime: RuntimeParams, seed: int, num_classes: int) -> Runtime:
        device = setup_runtime(runtime, seed)
        group = distributed.current()
        if runtime.precision == "fp16" and device.type == "cpu":
            print(
                "[runtime] note: fp16 autocast on the CPU is slow on most CPUs; bf16 is the CPU's half type"
            )
        return cls(
            device,
            seed,
            num_classes,
            runtime.channels_last,
            runtime.progress and group.is_main,
            runtime.eval_batch_size,
            runtime.precision,
            runtime.compile,
            group,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.precision]

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` for uint8 images ``x``, on the CPU, computed as this runtime says (device,
        batch, memory format, precision; shared among the training processes)."""
        return predict_logits(
            model, x, self.device, self.eval_batch_size, self.memory_format, self.amp_dtype, self.group
        )


_OPTIMIZERS: dict[Optimizer, Callable[[list[dict[str, Any]], TrainParams], torch.optim.Optimizer]] = {
    Optimizer.SGD: lambda groups, cfg: torch.optim.SGD(
        groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    ),
    Optimizer.ADAMW: lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


def _make_optimizer(params: list[dict[str, Any]], cfg: TrainParams) -> torch.optim.Optimizer:
    try:
        make = _OPTIMIZERS[Optimizer(cfg.optimizer)]
    except (ValueError, KeyError):
        raise DistillopsError(
            f"optimizer {cfg.optimizer!r} is not one of: {', '.join(o.value for o in Optimizer)}"
        ) from None
    return make(params, cfg)


def _make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainParams, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate factor: one-cycle (linear warm-up over the first quarter, then cosine
    decay to zero), cosine decay, or constant. Works for any number of steps, even one."""
    schedule = Schedule(cfg.schedule)
    warm = max(1, steps // 4) if schedule is Schedule.ONECYCLE else 0
    decay = max(1, steps - warm)

    def factor(step: int) -> float:
        if schedule is Schedule.CONSTANT:
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


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    resumed_from: int | None = None


@dataclass
class Progress:
    """Where a fit stands: what a checkpoint saves and a resume restores."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches completed in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)  # running metric sums of the current epoch


View = tuple[torch.Tensor, torch.Tensor]  # uint8 images, target rows


@dataclass
class CheckpointFile:
    """Resumable training state on disk: written atomically, read back only by a run with the same
    ``key`` (a fingerprint of everything that must agree for a bit-identical resume)."""

    path: Path
    key: str
    stage: str

    def save(self, state: dict[str, Any]) -> None:
        state = {"key": self.key, **state}
        write_with(self.path, lambda tmp: torch.save(state, tmp))

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            print(f"[{self.stage}] ignoring unreadable checkpoint {self.path}: {exc}")
            return None
        if state.get("key") != self.key:
            print(f"[{self.stage}] checkpoint {self.path} is for other settings; starting afresh")
            return None
        return state


@dataclass
class _Fit:
    """The state of one call to :meth:`Trainer.fit`."""

    views: list[View]
    opt: torch.optim.Optimizer
    sched: Any
    g: torch.Generator  # the augmenters' generator
    checkpoint: CheckpointFile | None
    where: Placement  # where the training views live (host, device, or streamed to it)
    mixes_unlabelled: bool  # the training set holds images without labels (all-zero target rows)
    trained: tuple[nn.Module, nn.Module]  # the model and the loss modules, as the checkpoint holds them
    scaler: torch.amp.GradScaler | None  # fp16's loss scaler
    group: Group
    progress: Progress = field(default_factory=Progress)
    teacher_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # cached, per training view

    def save(self) -> None:
        """Checkpoint: rank 0 writes it, with every process's augmentation generator."""
        if self.checkpoint is None:
            return
        aug_states = self.group.gather_objects(self.g.get_state()) if self.group.distributed else None
        if not self.group.is_main:
            return
        model, loss_modules = self.trained
        self.checkpoint.save(
            {
                "epoch": self.progress.epoch,
                "step": self.progress.step,
                "model": model.state_dict(),
                "loss_modules": loss_modules.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "aug_rng": self.g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "history": json.dumps(self.progress.history),
                "acc": json.dumps(self.progress.sums),
                **({"aug_rng_ranks": aug_states} if aug_states is not None else {}),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            }
        )

    def resume(self) -> bool:
        """Restore the checkpoint of the same settings, if there is one."""
        state = self.checkpoint.load() if self.checkpoint is not None else None
        if state is None:
            return False
        model, loss_modules = self.trained
        model.load_state_dict(state["model"])
        loss_modules.load_state_dict(state["loss_modules"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.g.set_state(
            state["aug_rng_ranks"][self.group.rank] if self.group.distributed else state["aug_rng"]
        )
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.progress = Progress(
            state["epoch"], state["step"], json.loads(state["history"]), json.loads(state["acc"])
        )
        return True


@dataclass
class Trainer:
    """Trains ``model`` with ``losses`` (plus ``teacher`` when a loss needs one), validating each epoch."""

    stage: str
    model: nn.Module
    losses: LossSet
    cfg: TrainParams
    runtime: Runtime
    augmenters: Sequence[Plugin] = ()
    teacher: nn.Module | None = None
    # offline augmentation: K materialised copies of the training split, used in turn per epoch
    copies: AugmentedCopies | None = None
    checkpoint: Path | None = None
    label: str = ""
    # learning-rate multiplier per parameter name (e.g. a smaller one for transferred layers)
    lr_scale: Callable[[str], float] | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    # called with the model and the 0-based epoch after the model is put in training mode, e.g. to
    # freeze or unfreeze layers (frozen parameters: requires_grad False, their modules in eval mode)
    before_epoch: Callable[[nn.Module, int], None] | None = None

    def __post_init__(self) -> None:
        if self.copies is not None and self.augmenters:
            raise DistillopsError(
                f"stage '{self.stage}': offline copies and online augmenters are exclusive; pick one "
                f"with augment.mode"
            )
        self.losses.check_teacher(self.teacher is not None)
        self.device = self.runtime.device
        self.memory_format = self.runtime.memory_format
        self.group = self.runtime.group
        if self.group.distributed and self.device.type == "cuda":
            # BatchNorm statistics over the global batch; on the CPU (gloo) each process normalises its
            # own share of the batch, and rank 0's running statistics are the ones kept
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=self.memory_format)
        self.losses.modules.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device, memory_format=self.memory_format).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # what runs the forward passes of training: the model itself, or its DDP and compiled wrappers
        self.net: nn.Module = self.model
        self.teacher_net: nn.Module | None = self.teacher
        self.compiled = self.runtime.compile and not (self.losses.student_taps or self.losses.teacher_taps)
        if self.runtime.compile and not self.compiled:
            print(f"[{self.stage}] runtime.compile: not compiling: feature losses tap layers of the models")
        if self.compiled and self.teacher is not None:
            self.teacher_net = torch.compile(self.teacher)
        amp = self.runtime.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == torch.float16 else None
        # with several processes, each step's readings are summed inside the gradient all-reduce
        self.piggyback = distributed.Piggyback() if self.group.distributed else None
        # fixed inputs (no online augmentation, no teacher features): one teacher pass per training view
        # serves every epoch that uses it
        self.cache_teacher = self.teacher is not None and not self.augmenters and not self.losses.teacher_taps
        self.teacher_passes = 0

    # --- the loop --------------------------------------------------------------------------------------
    def fit(self, train: Split, val: Split) -> TrainResult:
        """Train on ``train``, or, with offline augmentation, on copy ``epoch mod K`` of ``self.copies``."""
        run = self._start(train)
        resumed_from = self._resume(run)
        first_epoch = run.progress.epoch
        t0 = time.perf_counter()
        with interrupts.deferred():
            for epoch in range(first_epoch, self.cfg.epochs):
                self._run_epoch(run, epoch)
                metrics = self._validate(run, val)
                run.progress.history.append({"epoch": epoch + 1, **metrics})
                run.progress.epoch, run.progress.step, run.progress.sums = epoch + 1, 0, {}
                print(
                    f"[{self.stage}] {self._label}epoch {epoch + 1}/{self.cfg.epochs} "
                    f"train_loss {metrics[layout.TRAIN_LOSS]:.4f} val_accuracy {metrics[layout.VAL_ACCURACY]:.4f}",
                    flush=True,
                )
                run.save()  # before the epoch's metrics are logged: a tracking outage never costs the epoch
                if self.on_epoch is not None:
                    self.on_epoch(epoch + 1, metrics)
                self._check_interrupt()
        if self.cache_teacher:
            views = len(run.views)
            print(
                f"[{self.stage}] {self._label}teacher logits: {self.teacher_passes} passes for "
                f"{self.cfg.epochs - first_epoch} epochs ({views} training view{'s' if views > 1 else ''})"
            )
        return TrainResult(run.progress.history, time.perf_counter() - t0, resumed_from)

    @property
    def _label(self) -> str:
        return f"{self.label} " if self.label else ""

    def _check_interrupt(self) -> None:
        """Raise a recorded signal; with several processes, on every one as soon as one has it."""
        if not self.group.distributed:
            interrupts.check()
        elif self.group.any(interrupts.pending() is not None):
            interrupts.raise_pending(default=signal.SIGTERM)

    # --- the parts of fit ----------------------------------------------------------------------------
    def _start(self, train: Split) -> _Fit:
        """Training views, lazily sized loss parameters, optimizer, schedule, generator, checkpoint."""
        views = self._views(train)
        if len(views[0][1]) == 0:
            raise DistillopsError(f"stage '{self.stage}': the training split is empty")
        mixes_unlabelled = bool((views[0][1].sum(1) == 0).any())
        if mixes_unlabelled and not self.losses.label_free:
            raise DistillopsError(
                f"stage '{self.stage}': the training set holds unlabelled images, but none of the losses "
                f"{list(self.losses.names)} can learn from them (e.g. kd or pseudo_label can)"
            )
        self._materialise_lazy(views[0], mixes_unlabelled)
        opt = self._optimizer()
        steps = self.cfg.epochs * math.ceil(len(views[0][1]) / self.cfg.batch_size)
        checkpoint = None
        if self.checkpoint is not None:
            checkpoint = CheckpointFile(self.checkpoint, self._checkpoint_key(views), self.stage)
        nbytes = sum(x.nbytes + t.nbytes for x, t in views)
        where = batches.placement(nbytes, self.device)
        if where is not Placement.HOST:
            print(f"[{self.stage}] {self._label}{batches.describe(where, nbytes, self.device)}")
        if where is Placement.DEVICE:
            views = [(x.to(self.device), t.to(self.device)) for x, t in views]
        self.teacher_passes = 0
        # each process draws its own augmentations (rank 0 the single process's)
        aug_seed = self.runtime.seed + 1_000_003 * self.group.rank
        return _Fit(
            views,
            opt,
            _make_scheduler(opt, self.cfg, steps),
            torch.Generator(device=self.device).manual_seed(aug_seed),
            checkpoint,
            where,
            mixes_unlabelled,
            (self.model, self.losses.modules),
            self.scaler,
            self.group,
        )

    def _views(self, train: Split) -> list[View]:
        """What epoch e trains on: view e mod len(views) (the split itself, or each offline copy)."""
        if self.copies is not None:
            return [
                (torch.from_numpy(x), torch.from_numpy(t))
                for x, t in map(self.copies.copy, range(len(self.copies)))
            ]
        return [(torch.from_numpy(train.x), train.target_rows(self.runtime.num_classes))]

    def _checkpoint_key(self, views: list[View]) -> str:
        """A checkpoint resumes only the same settings, architecture, teacher and training data."""
        return config_hash(
            {
                "stage": self.stage,
                "run": self.label,
                "cfg": self.cfg.__dict__,
                "seed": self.runtime.seed,
                "n": len(views[0][1]),
                "losses": self.losses.fingerprint(),
                "augment": [a.describe() for a in self.augmenters],
                "copies": len(views) if self.copies is not None else 0,
                "model": [(k, tuple(v.shape)) for k, v in self.model.state_dict().items()],
                "teacher": digest(t.detach() for t in self.teacher.state_dict().values())
                if self.teacher
                else "",
                "data": digest(t for view in views for t in view),
                **({"processes": self.group.world} if self.group.distributed else {}),
            }
        )

    def _materialise_lazy(self, view: View, mixes_unlabelled: bool) -> None:
        """Loss modules built from lazy layers (e.g. a FitNets regressor sized from the features it
        sees) get their parameters from one forward pass on two training images, before the optimizer
        is built; the models run in eval mode so no BatchNorm statistics move."""
        if not self.losses.has_lazy:
            return
        modes = [(m, m.training) for m in (self.model, self.teacher) if m is not None]
        for m, _ in modes:
            m.eval()
        x = to_float(view[0][:2].to(self.device)).contiguous(memory_format=self.memory_format)
        targets = view[1][:2].to(self.device)
        try:
            with torch.no_grad():
                self._forward(x, targets, None, mixes_unlabelled=mixes_unlabelled)
        finally:
            for m, was_training in modes:
                m.train(was_training)
        self.losses.modules.to(self.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        """The parameters of the model and of the loss modules, grouped by learning rate. Parameters
        frozen now (``requires_grad`` False) are included too, so that unfreezing them later trains
        them; while they get no gradient the optimizer leaves them alone."""
        groups: dict[float, list[nn.Parameter]] = {}
        named = [
            *self.model.named_parameters(),
            *(("loss." + n, p) for n, p in self.losses.modules.named_parameters()),
        ]
        for name, param in named:
            scale = self.lr_scale(name) if self.lr_scale is not None else 1.0
            groups.setdefault(float(scale), []).append(param)
        return _make_optimizer(
            [{"params": params, "lr": self.cfg.lr * scale} for scale, params in groups.items()], self.cfg
        )

    def _resume(self, run: _Fit) -> int | None:
        """The epoch a checkpoint of the same settings resumes from, or None."""
        if not run.resume():
            return None
        print(
            f"[{self.stage}] resuming {self.label or 'training'} from epoch {run.progress.epoch + 1}, "
            f"batch {run.progress.step}"
        )
        return run.progress.epoch

    def _teacher_logits(self, run: _Fit, index: int) -> torch.Tensor | None:
        """The cached teacher logits of a training view (computed at its first use), or None."""
        if not self.cache_teacher:
            return None
        if index not in run.teacher_logits:
            run.teacher_logits[index] = self.runtime.predict(self.teacher, run.views[index][0]).to(
                self.device
            )
            self.teacher_passes += 1
        return run.teacher_logits[index]

    def _run_epoch(self, run: _Fit, epoch: int) -> None:
        """Train one epoch from ``run.progress.step``; on a signal, checkpoint and raise at a step
        boundary."""
        self.model.train()
        if self.before_epoch is not None:
            self.before_epoch(self.model, epoch)
        self.net = self._training_net()
        cfg, progress = self.cfg, run.progress
        index = epoch % len(run.views)
        x_all, t_all = run.views[index]
        cached = self._teacher_logits(run, index)
        steps = math.ceil(len(t_all) / cfg.batch_size)
        perm = batches.epoch_permutation(len(t_all), self.runtime.seed, epoch)
        sums = progress.sums = progress.sums or {"loss": 0.0, "correct": 0, "seen": 0}
        names = [layout.LOSS_TERM.format(name) for name in self.losses.names]
        bar = _progress(
            self.runtime.progress and not interrupts.pending(),
            steps,
            progress.step,
            f"{self.stage} {self.label} epoch {epoch + 1}/{cfg.epochs}".replace("  ", " "),
        )
        for batch in batches.epoch_batches(
            x_all, t_all, perm, cfg.batch_size, progress.step, self.group, self.device, run.where
        ):
            step = batch.step
            readings, correct, labelled, stop = self._step(run, batch.x, batch.t, batch.idx, cached)
            b = batch.rows  # the global batch (each process trained on its share)
            sums["loss"] += readings[0] * b
            sums["correct"] += int(correct)
            sums["seen"] += b
            sums["labelled"] = sums.get("labelled", 0) + (b if labelled is None else int(labelled))
            for name, value in zip(names, readings[1:], strict=True):
                sums[name] = sums.get(name, 0.0) + value * b
            bar.update(1)
            if stop:
                bar.close()
                progress.step = step + 1
                run.save()
                print(
                    f"[{self.stage}] interrupted: checkpoint saved at epoch {epoch + 1}, "
                    f"batch {step + 1} -> {self.checkpoint}"
                )
                interrupts.raise_pending(default=signal.SIGTERM)
        bar.close()

    def _training_net(self) -> nn.Module:
        """The module the training steps call: the model, wrapped for several processes (rebuilt each
        epoch, after ``before_epoch`` may have frozen or unfrozen layers, since DistributedDataParallel
        synchronises the gradients of the parameters trainable when it is built) and compiled."""
        net: nn.Module = self.model
        if self.group.distributed:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            self.piggyback.attach(net)
        if self.compiled:
            if self.group.distributed or not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
                net = torch.compile(net)
            else:
                net = self.net  # compiled once; recompiles by itself if layers are frozen
        return net

    def _validate(self, run: _Fit, val: Split) -> dict[str, float]:
        """The epoch's metrics: training sums turned into means, plus loss and accuracy on ``val``."""
        self.group.broadcast_buffers(self.model)  # every process evaluates (and rank 0 saves) one model
        logits = self.runtime.predict(self.model, torch.from_numpy(val.x))
        labels = torch.from_numpy(val.y)
        sums = run.progress.sums
        seen = max(sums["seen"], 1)
        return {
            layout.TRAIN_LOSS: sums["loss"] / seen,
            layout.TRAIN_ACCURACY: sums["correct"] / max(sums.get("labelled", seen), 1),
            layout.VAL_LOSS: float(F.cross_entropy(logits, labels)),
            layout.VAL_ACCURACY: accuracy(logits, labels),
            layout.LR: run.opt.param_groups[0]["lr"],
            **{k: v / seen for k, v in sums.items() if k.startswith(layout.LOSS_TERM.format(""))},
            **self.losses.metrics(),
        }

    # --- one step --------------------------------------------------------------------------------------
    def _forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        cached: torch.Tensor | None,
        idx: torch.Tensor | None = None,
        *,
        mixes_unlabelled: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """(weighted loss, its terms, correct predictions, labelled rows or None when all are) for one
        batch of float images; unlabelled rows (all-zero targets) count for neither."""
        labels = targets.argmax(1)
        labelled = targets.sum(1) > 0 if mixes_unlabelled else None
        amp = self.runtime.amp_dtype
        with (
            feature_taps(self.teacher, self.losses.teacher_taps) as t_feats,
            feature_taps(self.model, self.losses.student_taps) as s_feats,
        ):
            t_logits = None
            with autocast(self.device, amp):
                if cached is not None:
                    t_logits = cached[idx]
                elif self.teacher_net is not None:
                    with torch.no_grad():
                        t_logits = self.teacher_net(x)
                logits = self.net(x)
            if amp is not None:  # the losses see float32, whatever precision the models ran in
                logits = logits.float()
                t_logits = t_logits.float() if t_logits is not None else None
                s_feats = {k: v.float() for k, v in s_feats.items()}
                t_feats = {k: v.float() for k, v in t_feats.items()}
            inputs = LossInputs(logits, t_logits, targets, labels, s_feats, t_feats, labelled)
            total, terms = self.losses(inputs)
        hits = logits.argmax(1) == labels
        if labelled is None:
            return total, terms, hits.sum(), None
        return total, terms, (hits & labelled).sum(), labelled.sum()

    def _step(
        self, run: _Fit, xb: torch.Tensor, tb: torch.Tensor, idx: torch.Tensor, cached: torch.Tensor | None
    ) -> tuple[list[float], float, float | None, bool]:
        """One update; returns ``[total loss, term 1, ...]``, the correct predictions, the labelled rows
        (None: all), all on the host and over every process's share of the batch, and whether to stop
        here for a signal."""
        x = to_float(xb.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        targets = tb.to(self.device, non_blocking=True)
        for aug in self.augmenters:
            x, targets = aug(x, targets, run.g)
        total, terms, correct, labelled = self._forward(
            x, targets, cached, idx, mixes_unlabelled=run.mixes_unlabelled
        )
        run.opt.zero_grad(set_to_none=True)
        if self.piggyback is not None:  # summed over the processes with the gradients
            self.piggyback.pending = local = self.group.local_readings(
                total, terms, correct, labelled, len(idx), interrupts.pending() is not None
            )
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if self.piggyback is not None:
            # DDP averaged the model's gradients; the loss modules' are averaged here
            self.group.average_gradients(self.losses.modules.parameters())
            summed = self.piggyback.take()
            readings, correct_n, labelled_n, stop = self.group.step_readings(
                summed if summed is not None else self.group.sum(local), labelled is None
            )
        else:
            # the step's one host sync: the loss readings (for the guard and the running metrics) and the
            # counts of correct predictions (and labelled rows), read back together
            counts = [correct] if labelled is None else [correct, labelled]
            host = torch.stack(
                [total.detach(), *(t.detach() for t in terms), *(c.to(total.dtype) for c in counts)]
            ).tolist()
            readings = host[: len(terms) + 1]
            correct_n, labelled_n = host[len(terms) + 1], None if labelled is None else host[-1]
            stop = interrupts.pending() is not None
        self.losses.guard(readings)
        if self.scaler is not None:
            self.scaler.step(run.opt)
            self.scaler.update()
        else:
            run.opt.step()
        run.sched.step()
        return readings, correct_n, labelled_n, stop


class _NoBar:
    def update(self, _n: int) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)
