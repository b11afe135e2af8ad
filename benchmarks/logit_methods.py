"""Logit distillation methods on the pipeline's own teacher, student and data: settings chosen on the
validation split, the chosen ones reported on the test split over seeds.

    python benchmarks/logit_methods.py sweep --seeds 0 1 [--jobs 2]     # every candidate, validation
    python benchmarks/logit_methods.py test --seeds 0 1 2 3 4 [--jobs 2]  # the chosen ones, test split
    python benchmarks/logit_methods.py table                            # LOGIT_METHODS.md from the runs
    python benchmarks/logit_methods.py log                              # the test runs to MLflow, then:
    distillops report --experiment logit-methods --stage benchmark --out reports/methods \
        --metric teacher.accuracy --metric student_alone.accuracy --metric student.accuracy \
        --metric distill.gain --metric distill.gap_closed

Run after `dvc repro teacher` (it reads models/teacher and data/prepared; the seed-ensemble settings also
read two more teachers, see SEED_TEACHERS, and the assistant settings a student distilled from the
teacher, see ASSISTANTS). Everything but the losses, the epochs (30, or the setting's own),
augmentation (off, or the setting's augment.ops), the optimiser fields a setting overrides (learning rate,
weight decay, batch size) and the teacher (as trained, flip-averaged, averaged with teachers of other
seeds, or an assistant distilled from it) is the distill stage's configuration in params.yaml (student, optimiser, schedule, batch size). Every run records both
its validation and its test accuracy in LOGIT_METHODS.jsonl (one line per run, appended as it finishes,
so an interrupted sweep resumes where it stopped); the `sweep` phase and the choice read the validation
accuracy only, `test` reruns nothing already measured.
With ``--jobs 2`` two runs train at once, one thread each (on 2 cores more runs per hour than one run
on two threads); every row of the table is measured that way, so they compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

import torch

from pipeline.report import mean_std

HERE = Path(__file__).resolve().parent
RUNS = HERE / "LOGIT_METHODS.jsonl"
OUT = HERE / "LOGIT_METHODS.md"


def spec(name: str, weight: float, **kwargs: object) -> dict:
    return {"name": name, "weight": weight, **kwargs}


# every setting trains 30 epochs (the distill stage's schedule when the methods were compared) but those
# that name their own, which try the schedule itself: a longer one is where KD is reported to gain most over
# the student alone, which overfits, and a shorter one may suit the student alone better
EPOCHS = 30
PARAMS_OPS = True  # Setting.augment: params.yaml's augment.ops (flips and crops)
TRAIN_KEYS = ("lr", "weight_decay", "batch_size")  # the optimiser fields a Setting may override


class _Flipped(torch.nn.Module):
    """A model that sees its input mirrored left to right."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.flip(x, dims=[-1]))


def _flip_averaged(teacher: torch.nn.Module) -> torch.nn.Module:
    from pipeline.teachers import Ensemble

    # the teacher's probabilities on an image and its mirror image, averaged as the pipeline averages an
    # ensemble's members: the teacher was trained with flips, and its mirror view is a second opinion
    return Ensemble([teacher, _Flipped(teacher)], [1.0, 1.0])


# teachers of the same configuration as models/teacher, trained from other seeds: make them with
#   python benchmarks/compression_sweep.py teachers --names lenet5x4-e20 --seeds 1 2 --keep models/seed-teachers
SEED_TEACHERS = [Path("models/seed-teachers") / f"lenet5x4-e20-{seed}" for seed in (1, 2)]


def _seed_ensemble(teacher: torch.nn.Module) -> torch.nn.Module:
    from pipeline.modelio import load_model
    from pipeline.teachers import Ensemble

    missing = [str(p) for p in SEED_TEACHERS if not (p / "model.json").exists()]
    if missing:
        raise SystemExit(
            f"the seed ensemble needs the teachers {', '.join(missing)}: train them with "
            "`python benchmarks/compression_sweep.py teachers --names lenet5x4-e20 --seeds 1 2 "
            "--keep models/seed-teachers`"
        )
    # members that differ only in their seed: independent errors, so their average is a stronger teacher
    # whose soft targets also carry where the members disagree
    members = [teacher, *(load_model(p, torch.device("cpu"))[0].eval() for p in SEED_TEACHERS)]
    return Ensemble(members, [1.0] * len(members))


# assistant teachers (Mirzadeh et al., AAAI 2020, "TAKD"): students of a size between the teacher (452k
# parameters) and the student (15.7k), distilled from the teacher with params.yaml's KD (seed 0); make them with
#   python benchmarks/compression_sweep.py students --names "lenet5-w2-h96|kd-T3" --skip-alone \
#       --teacher models/teacher --seeds 0 --keep models/assistants     (and lenet5-w3-h128)
ASSISTANTS = {
    "assistant-88k": Path("models/assistants") / "lenet5-w2-h96|kd-T3-0-student",
    "assistant-177k": Path("models/assistants") / "lenet5-w3-h128|kd-T3-0-student",
}


def _assistant(kind: str):  # noqa: ANN202 - a TEACHERS entry
    def build(teacher: torch.nn.Module) -> torch.nn.Module:
        from pipeline.modelio import load_model

        path = ASSISTANTS[kind]
        if not (path / "model.json").exists():
            raise SystemExit(f"the {kind} setting needs the assistant {path}: see ASSISTANTS for its command")
        # the student learns from the assistant only: a teacher closer to its own size, whose function it
        # can follow more closely than the teacher's
        return load_model(path, torch.device("cpu"))[0].eval()

    return build


# what a Setting's students learn from: the teacher as trained, an ensemble of its two views, an ensemble
# of it and two teachers trained the same way from other seeds (a list of teacher.source files in the
# pipeline), or an assistant distilled from it
TEACHERS = {
    "plain": lambda teacher: teacher,
    "flip-averaged": _flip_averaged,
    "seed-ensemble": _seed_ensemble,
    **{kind: _assistant(kind) for kind in ASSISTANTS},
}
# the teacher a kind's gap closed is measured against, where it is not the kind itself: an assistant is a
# means to approach the teacher, so its students are measured against the teacher's accuracy
GAP_AGAINST = dict.fromkeys(ASSISTANTS, "plain")


@dataclass(frozen=True)
class Setting:
    """One candidate: its losses, its epochs, its augmentation and its optimiser. ``augment`` is False
    (none: the teacher's logits are computed once per run), PARAMS_OPS, or the setting's own ops. Augmented
    settings see fresh views every batch, so the teacher runs on every batch: the student matches the
    teacher on images it has not seen before; mixup's blends of two images are the "function matching" of
    Beyer et al. (CVPR 2022), where KD kept gaining over long schedules. ``train`` overrides fields of the
    distill stage's training params (``lr``, ``weight_decay``, ``batch_size``); empty: params.yaml's."""

    losses: list[dict]
    epochs: int = EPOCHS
    augment: bool | list[dict] = False
    train: dict = field(default_factory=dict)
    teacher: str = "plain"  # a key of TEACHERS

    def __post_init__(self) -> None:
        unknown = set(self.train) - set(TRAIN_KEYS)
        if unknown:
            raise ValueError(f"Setting.train may override {', '.join(TRAIN_KEYS)}, not {sorted(unknown)}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"Setting.teacher is one of {sorted(TEACHERS)}, not {self.teacher!r}")


CE_HALF, CE = spec("ce", 0.5), spec("ce", 1.0)
KD_T3 = [spec("kd", 0.5, temperature=3.0), CE_HALF]  # today's default losses
# method -> {setting label: setting}; "alone" and "kd T=3" are the references every table row is set
# against (the student trained without a teacher, and today's default)
CANDIDATES: dict[str, dict[str, Setting]] = {
    "alone": {
        "ce": Setting([CE]),
        "ce, 20 epochs": Setting([CE], 20),
        "ce, 60 epochs": Setting([CE], 60),
        # the optimiser settings tried for KD below, tried for the student alone too, so that its best
        # is as tuned as the distilled student's
        "ce, 20 epochs, lr 0.006": Setting([CE], 20, train={"lr": 0.006}),
        "ce, 20 epochs, lr 0.0015": Setting([CE], 20, train={"lr": 0.0015}),
        "ce, 20 epochs, batch 64": Setting([CE], 20, train={"batch_size": 64}),
        "ce, 20 epochs, wd 0.05": Setting([CE], 20, train={"weight_decay": 0.05}),
    },
    "kd": {"kd T=3": Setting(KD_T3)},
    "kd, longer schedule": {
        "kd T=3, 60 epochs": Setting(KD_T3, 60),
        "kd T=3, 100 epochs": Setting(KD_T3, 100),
        "kd T=3, 60 epochs, flip+crop": Setting(KD_T3, 60, PARAMS_OPS),
        "kd T=3, 60 epochs, mixup": Setting(KD_T3, 60, [{"name": "mixup", "alpha": 1.0}]),
        "kd T=4, 60 epochs": Setting([spec("kd", 0.5, temperature=4.0), CE_HALF], 60),
        "kd T=3, 60 epochs, 0.9/0.1": Setting([spec("kd", 0.9, temperature=3.0), spec("ce", 0.1)], 60),
    },
    # the distilled student fits its training set less tightly than the student alone (train accuracy 0.94
    # against 0.96 at 30 epochs) and kept gaining from 30 to 60 epochs: the optimiser may hold it back.
    # AdamW's decay at 0.0005 shrinks the weights by about 2 % over 60 epochs; 0.05 by about 85 %
    "kd, tuned optimiser": {
        "kd T=3, 60 epochs, lr 0.006": Setting(KD_T3, 60, train={"lr": 0.006}),
        "kd T=3, 60 epochs, lr 0.0015": Setting(KD_T3, 60, train={"lr": 0.0015}),
        "kd T=3, 60 epochs, batch 64": Setting(KD_T3, 60, train={"batch_size": 64}),
        "kd T=3, 60 epochs, wd 0.05": Setting(KD_T3, 60, train={"weight_decay": 0.05}),
    },
    # a stronger teacher at no training cost: the teacher's probabilities averaged over an image and its
    # mirror image (test 0.9299 against 0.9268). Its gap closed is measured against that stronger teacher
    "kd, flip-averaged teacher": {
        "kd T=3, 60 epochs, flip-averaged teacher": Setting(KD_T3, 60, teacher="flip-averaged"),
    },
    # a stronger teacher that costs training: the teacher and two more trained from seeds 1 and 2 (about
    # 10 minutes each, two at once on 2 cores), their probabilities averaged
    "kd, seed ensemble": {
        "kd T=3, 60 epochs, 3-seed ensemble": Setting(KD_T3, 60, teacher="seed-ensemble"),
        "kd T=2, 60 epochs, 3-seed ensemble": Setting(
            [spec("kd", 0.5, temperature=2.0), CE_HALF], 60, teacher="seed-ensemble"
        ),
    },
    # KD plus a FitNets hint: the student's last feature map (16 channels, 5x5) regressed by a 1x1
    # convolution onto the teacher's (64 channels), or its 32-unit hidden layer by a linear map onto the
    # teacher's 256 units (weighted so both start near KD's scale: mean squares 0.48 and 4.7)
    # the student matches the teacher on only 95.9 % of its own training images, and a stronger teacher
    # lifted it no further: an assistant of a size in between, distilled from the teacher, may be easier to
    # follow (TAKD: a large capacity gap is what holds KD back)
    "kd, assistant teacher": {
        "kd T=3, assistant 88k": Setting(KD_T3, teacher="assistant-88k"),
        "kd T=3, 60 epochs, assistant 88k": Setting(KD_T3, 60, teacher="assistant-88k"),
        "kd T=3, assistant 177k": Setting(KD_T3, teacher="assistant-177k"),
        "kd T=3, 60 epochs, assistant 177k": Setting(KD_T3, 60, teacher="assistant-177k"),
    },
    "kd + fitnets": {
        "kd T=3 + fitnets features, 60 epochs": Setting([*KD_T3, spec("fitnets", 1.0)], 60),
        "kd T=3 + fitnets hidden, 60 epochs": Setting(
            [*KD_T3, spec("fitnets", 0.2, student_layer="classifier", teacher_layer="classifier")], 60
        ),
    },
    "kd standardize": {
        "kd T=1 standardize": Setting([spec("kd", 0.5, temperature=1.0, standardize=True), CE_HALF]),
        "kd T=2 standardize": Setting([spec("kd", 0.5, temperature=2.0, standardize=True), CE_HALF]),
        "kd T=3 standardize": Setting([spec("kd", 0.5, temperature=3.0, standardize=True), CE_HALF]),
        "kd T=2 standardize, 0.9/0.1": Setting(
            [spec("kd", 0.9, temperature=2.0, standardize=True), spec("ce", 0.1)]
        ),
    },
    "dkd": {
        "dkd beta=2 T=4": Setting([spec("dkd", 1.0, beta=2.0, temperature=4.0), CE]),
        "dkd beta=4 T=4": Setting([spec("dkd", 1.0, beta=4.0, temperature=4.0), CE]),
        "dkd beta=2 T=2 standardize": Setting(
            [spec("dkd", 1.0, beta=2.0, temperature=2.0, standardize=True), CE]
        ),
    },
    "nkd": {
        "nkd T=1 gamma=1.5": Setting([spec("nkd", 1.0, temperature=1.0, gamma=1.5), CE]),
        "nkd T=2 gamma=1.5": Setting([spec("nkd", 1.0, temperature=2.0, gamma=1.5), CE]),
    },
    "ctkd": {
        "ctkd T0=3": Setting([spec("ctkd", 0.5, temperature=3.0), CE_HALF]),
        "ctkd T0=2 standardize": Setting([spec("ctkd", 0.5, temperature=2.0, standardize=True), CE_HALF]),
    },
}
SETTINGS = {label: setting for settings in CANDIDATES.values() for label, setting in settings.items()}
METHOD_OF = {label: method for method, settings in CANDIDATES.items() for label in settings}


# --- runs -------------------------------------------------------------------------------------------------
_state: dict = {}


def _init_worker(params_file: str, threads: int) -> None:
    torch.set_num_threads(threads)
    from common import pipeline_inputs

    from pipeline.params import load_params

    params = load_params(params_file)
    splits, teacher = pipeline_inputs(params)
    _state.update(params=params, splits=splits, teacher=teacher)


def _run(label: str, seed: int) -> dict:
    from common import train_student

    from pipeline.params import LossSpec, PluginSpec

    setting = SETTINGS[label]
    losses = [
        LossSpec(s["name"], {k: v for k, v in s.items() if k not in ("name", "weight")}, s["weight"])
        for s in setting.losses
    ]
    params = _state["params"]
    if isinstance(setting.augment, list):
        ops = tuple(
            PluginSpec(o["name"], {k: v for k, v in o.items() if k != "name"}) for o in setting.augment
        )
        params = replace(params, augment=replace(params.augment, ops=ops))
    cfg = replace(params.distill, epochs=setting.epochs, augment=bool(setting.augment), **setting.train)
    t0 = time.perf_counter()
    teacher = TEACHERS[setting.teacher](_state["teacher"])
    trained = train_student(params, cfg, losses, seed, _state["splits"], teacher, label)
    return {
        "setting": label,
        "method": METHOD_OF[label],
        "seed": seed,
        "losses": setting.losses,
        "val_accuracy": trained.val_accuracy,
        "test_accuracy": trained.accuracy,
        "fit_seconds": round(trained.seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        "epochs": cfg.epochs,
        "augment": [o.name for o in params.augment.ops] if cfg.augment else [],
        **({"train": setting.train} if setting.train else {}),
        **({"teacher": setting.teacher} if setting.teacher != "plain" else {}),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def load_runs(path: Path = RUNS) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_all(pairs: Sequence[tuple[str, int]], params_file: str, jobs: int) -> None:
    done = {(r["setting"], r["seed"]) for r in load_runs()}
    todo = [p for p in pairs if p not in done]
    print(f"{len(todo)} run(s) to do, {len(pairs) - len(todo)} already measured", flush=True)
    if not todo:
        return
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(params_file, threads)
    ) as pool:
        futures = [pool.submit(_run, label, seed) for label, seed in todo]
        for future in futures:
            row = future.result()
            with RUNS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{row['setting']:32s} seed {row['seed']}: val {row['val_accuracy']:.4f} "
                f"test {row['test_accuracy']:.4f} ({row['wall_seconds']:.0f} s)",
                flush=True,
            )


# --- choice and tables ------------------------------------------------------------------------------------
def by_setting(runs: list[dict], seeds: Sequence[int] | None = None) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        if seeds is None or r["seed"] in seeds:
            out.setdefault(r["setting"], {})[r["seed"]] = r
    return out


def chosen(runs: list[dict], sweep_seeds: Sequence[int]) -> dict[str, str]:
    """method -> its setting with the best mean validation accuracy over the sweep's seeds."""
    table = by_setting(runs, sweep_seeds)
    best: dict[str, str] = {}
    for method, settings in CANDIDATES.items():
        scored = [
            (statistics.mean(r["val_accuracy"] for r in table[label].values()), label)
            for label in settings
            if label in table and len(table[label]) == len(sweep_seeds)
        ]
        if scored:
            best[method] = max(scored)[1]
    return best


def losses_text(losses: list[dict]) -> str:
    def one(s: dict) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("name", "weight"))
        return f"{s['weight']:g}*{s['name']}" + (f"({extra})" if extra else "")

    return " + ".join(one(s) for s in losses)


def teacher_kinds(runs: list[dict]) -> list[str]:
    """The kinds of teacher (keys of TEACHERS) that ``runs`` learned from, the plain one always."""
    used = {r.get("teacher", "plain") for r in runs}
    return [kind for kind in TEACHERS if kind == "plain" or kind in used]


def teacher_accuracies(params_file: str, kinds: Sequence[str]) -> dict[str, float]:
    """Test accuracy of each of these kinds of teacher (keys of TEACHERS): a setting's gap closed is
    measured against the teacher it learned from."""
    from common import pipeline_inputs

    from pipeline.evaluation import accuracy, predict_logits
    from pipeline.params import load_params

    splits, teacher = pipeline_inputs(load_params(params_file))
    x, y = (torch.from_numpy(a) for a in (splits["test"].x, splits["test"].y))
    return {
        kind: accuracy(predict_logits(TEACHERS[kind](teacher).eval(), x, torch.device("cpu")), y)
        for kind in kinds
    }


def gap_teacher(row: dict, teachers: dict[str, float]) -> float:
    """The test accuracy a run's gap closed is measured against: the teacher it learned from, as logged,
    or the one that teacher stands in for (GAP_AGAINST)."""
    kind = row.get("teacher", "plain")
    return teachers[GAP_AGAINST.get(kind, kind)]


def _dates(runs: list[dict]) -> str:
    """When the runs were made: one day, or the first and the last."""
    days = sorted({r["date"][:10] for r in runs})
    return "" if not days else days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def _hours_apart(a: dict, b: dict) -> float:
    fmt = "%Y-%m-%d %H:%M"
    return abs((datetime.strptime(a["date"], fmt) - datetime.strptime(b["date"], fmt)).total_seconds()) / 3600


def write_table(sweep_seeds: Sequence[int], test_seeds: Sequence[int], params_file: str) -> str:
    runs = load_runs()
    sweep = by_setting(runs, sweep_seeds)
    lines = [
        "# Logit distillation methods: chosen on validation, reported on test",
        "",
        "`python benchmarks/logit_methods.py sweep --seeds "
        f"{' '.join(map(str, sweep_seeds))} --jobs 2`, then `test --seeds {' '.join(map(str, test_seeds))} "
        f"--jobs 2`; {_dates(runs)}, a 2-core CPU, two runs at once with one thread "
        "each. Teacher: `models/teacher` from `dvc repro` (seed 0); student and training as the distill "
        "stage's params.yaml (LeNet-5 with 32 hidden units, "
        f"{EPOCHS} epochs, AdamW one-cycle, batch 128, no augmentation unless the setting names it, "
        "so the teacher's logits are computed once per run); only the losses differ, and the epochs, "
        "learning rate, weight decay, batch size or teacher where a setting names its own. Each run's per-run rows are in `LOGIT_METHODS.jsonl`.",
        "",
        "## Sweep on the validation split (5,000 images held out of the training set)",
        "",
        "| method | setting | losses | " + " | ".join(f"val seed {s}" for s in sweep_seeds) + " | mean |",
        "|---|---|---|" + "---|" * (len(sweep_seeds) + 1),
    ]
    best = chosen(runs, sweep_seeds)
    for method, settings in CANDIDATES.items():
        for label in settings:
            row = sweep.get(label, {})
            vals = [row[s]["val_accuracy"] if s in row else None for s in sweep_seeds]
            cells = " | ".join(f"{v:.4f}" if v is not None else "" for v in vals)
            got = [v for v in vals if v is not None]
            mean = f"{statistics.mean(got):.4f}" if got else ""
            mark = " **(chosen)**" if best.get(method) == label and len(settings) > 1 else ""
            lines.append(
                f"| {method} | {label}{mark} | {losses_text(SETTINGS[label].losses)} | {cells} | {mean} |"
            )

    teachers = teacher_accuracies(params_file, teacher_kinds(runs))
    test = by_setting(runs, test_seeds)
    alone = test.get(best.get("alone", "ce"), {})
    lines += [
        "",
        f"## Test split (10,000 images), seeds {', '.join(map(str, test_seeds))}",
        "",
        f"Teacher test accuracy {teachers['plain']:.4f}"
        + "".join(f"; {kind}: {acc:.4f}" for kind, acc in teachers.items() if kind != "plain")
        + ". "
        "Gain: distilled minus the student alone of the same seed; gap closed: the gain divided by (teacher "
        "- student alone) of that seed, the teacher the setting learned from (for an assistant, the teacher it "
        "was distilled from). s/run: the fit's training time "
        "(two runs sharing the 2 cores); vs KD time: its ratio to KD's runs of the same seeds made within the "
        "hour (under the same load; the seeds it names where only some were).",
        "",
        "| method | chosen setting | test accuracy | gain (pt) | gap closed | s/run | vs KD time |",
        "|---|---|---|---|---|---|---|",
    ]
    kd_runs = test.get("kd T=3", {})
    for method in CANDIDATES:
        label = best.get(method)
        row = test.get(label or "", {})
        seeds = [s for s in test_seeds if s in row]
        if not seeds:
            continue
        acc = [row[s]["test_accuracy"] for s in seeds]
        secs = statistics.mean(row[s]["fit_seconds"] for s in seeds)
        partial = "" if len(seeds) == len(test_seeds) else f" ({len(seeds)} seeds)"
        if method == "alone":
            lines.append(f"| student alone | {label} | {mean_std(acc)}{partial} | | | {secs:.0f} | |")
            continue
        pairs = [(row[s]["test_accuracy"], alone[s]["test_accuracy"]) for s in seeds if s in alone]
        teacher = gap_teacher(row[seeds[0]], teachers)
        gain = mean_std([d - a for d, a in pairs], 100, 2, signed=True) if pairs else ""
        gap = (
            mean_std([(d - a) / (teacher - a) for d, a in pairs], 100, 0, signed=True) + " %" if pairs else ""
        )
        # against KD's runs of the same seeds made within the hour (run together, under the same load)
        same = [s for s in seeds if s in kd_runs and _hours_apart(kd_runs[s], row[s]) < 1]
        ratio = ""
        if same:
            mine = statistics.mean(row[s]["fit_seconds"] for s in same)
            ratio = f"{mine / statistics.mean(kd_runs[s]['fit_seconds'] for s in same):.2f}x"
            if len(same) < len(seeds):
                ratio += f" (seeds {', '.join(map(str, same))})"
        lines.append(
            f"| {method} | {label} | {mean_std(acc)}{partial} | {gain} | {gap} | {secs:.0f} | {ratio} |"
        )
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


def log_to_mlflow(
    sweep_seeds: Sequence[int], test_seeds: Sequence[int], params_file: str, experiment: str
) -> int:
    """Each chosen setting's test runs as MLflow runs (tag ``distillops.stage`` = ``benchmark``) with the
    metric names of the pipeline's evaluate runs, so `distillops report --stage benchmark` tabulates and
    draws them like pipelines; the student alone of the same seed is each run's baseline."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.params import load_params

    runs = load_runs()
    best = chosen(runs, sweep_seeds)
    test = by_setting(runs, test_seeds)
    alone_label = best.get("alone", "ce")
    alone = test.get(alone_label, {})
    teachers = teacher_accuracies(params_file, teacher_kinds(runs))
    train = load_params(params_file).distill
    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    earlier = client.search_runs([exp_id], "tags.`distillops.benchmark` = 'logit_methods'", max_results=5000)
    for run in earlier:  # logged again from the JSONL: the runs of this benchmark are replaced, not doubled
        client.delete_run(run.info.run_id)
    logged = 0
    for method, label in best.items():
        if method == "alone":
            continue
        for seed, row in sorted(test.get(label, {}).items()):
            if seed not in alone:
                continue
            base = alone[seed]["test_accuracy"]
            teacher = gap_teacher(row, teachers)
            run = client.create_run(
                exp_id,
                run_name=f"{label}, seed {seed}",
                tags={"distillops.stage": "benchmark", "distillops.benchmark": "logit_methods"},
            )
            params = {
                "seed": seed,
                "distill.epochs": row["epochs"],
                "distill.baseline_epochs": alone[seed]["epochs"],
                # the student alone's setting: its epochs and, where it has its own, its optimiser
                "benchmark.alone_setting": alone_label,
                "distill.augment": row.get("augment", []),
                "benchmark.teacher": row.get("teacher", "plain"),
                **{f"distill.{k}": row.get("train", {}).get(k, getattr(train, k)) for k in TRAIN_KEYS},
            }
            for i, spec_ in enumerate(row["losses"]):
                params.update({f"distill.losses.{i}.{k}": v for k, v in spec_.items()})
            metrics = {
                "teacher.accuracy": teacher,
                "student_alone.accuracy": base,
                "student.accuracy": row["test_accuracy"],
                "student.val_accuracy": row["val_accuracy"],
                "distill.gain": row["test_accuracy"] - base,
                "distill.gap_closed": (row["test_accuracy"] - base) / (teacher - base),
                "distill.fit_seconds": row["fit_seconds"],
            }
            now = int(time.time() * 1000)
            client.log_batch(  # one request per run
                run.info.run_id,
                metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )
            client.set_terminated(run.info.run_id)
            logged += 1
    return logged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["sweep", "test", "table", "log"])
    parser.add_argument("--experiment", default="logit-methods", help="MLflow experiment of the log phase")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--methods",
        nargs="+",
        help="test phase: these methods only ('best': the new method best on validation)",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    if args.phase == "sweep":
        seeds = args.seeds or args.sweep_seeds
        run_all([(label, s) for s in seeds for label in SETTINGS], args.params, args.jobs)
    elif args.phase == "log":
        n = log_to_mlflow(args.sweep_seeds, args.test_seeds, args.params, args.experiment)
        print(f"logged {n} runs to MLflow experiment '{args.experiment}'")
        return
    elif args.phase == "test":
        seeds = args.seeds or args.test_seeds
        best = chosen(load_runs(), args.sweep_seeds)
        methods = args.methods or list(CANDIDATES)
        if "best" in methods:  # the new method with the best validation accuracy, beside alone and kd
            scores = by_setting(load_runs(), args.sweep_seeds)
            new = [m for m in best if m not in ("alone", "kd")]
            top = max(new, key=lambda m: statistics.mean(r["val_accuracy"] for r in scores[best[m]].values()))
            methods = [m for m in methods if m != "best"] + [top]
        run_all(
            [(best[m], s) for s in seeds for m in CANDIDATES if m in best and m in methods],
            args.params,
            args.jobs,
        )
    print(
        write_table(
            args.sweep_seeds,
            args.seeds or args.test_seeds if args.phase == "test" else args.test_seeds,
            args.params,
        )
    )


if __name__ == "__main__":
    main()
