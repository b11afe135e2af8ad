"""Shared fixtures: tiny params, an isolated MLflow SQLite store, fake plugin distributions."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def repo_params():
    """The repository's params.yaml, parsed."""
    from pipeline.params import load_params

    return load_params(REPO / "params.yaml")


def train_cfg(**overrides: object):
    """TrainParams for unit tests: the distill section of params.yaml with ``overrides``."""
    import dataclasses

    from pipeline.params import TrainParams

    distill = repo_params().distill
    base = {f.name: getattr(distill, f.name) for f in dataclasses.fields(TrainParams)}
    return TrainParams(**{**base, **overrides})


def tiny_params_dict(**overrides: object) -> dict:
    """The repository's params.yaml shrunk to a smoke-test size (a few hundred samples, one epoch)."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"]["train_limit"] = 512
    p["data"]["test_limit"] = 256
    for stage in ("teacher", "distill", "transfer"):
        p[stage]["epochs"] = 1
    p["distill"]["baseline_epochs"] = None  # the student alone trains distill.epochs too
    p["target"]["label_budget"] = 100
    p["export"]["calibration_samples"] = 64
    p["evaluate"]["latency_warmup"] = 2
    p["evaluate"]["latency_repeats"] = 10
    p["evaluate"]["latency_rounds"] = 2
    p["runtime"]["progress"] = False
    # no latency bound on the champion: a loaded test machine must not decide which version is champion
    # (the bound itself is tested in tests/unit/test_model_registry.py)
    p["mlflow"]["champion_max_latency_ms"] = None
    for dotted, value in overrides.items():
        node = p
        *head, last = dotted.split(".")
        for key in head:
            node = node[key]
        node[last] = value
    return p


@pytest.fixture(autouse=True)
def _plugin_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and the subprocesses it starts) gets its own empty plugin cache, never ~/.cache."""
    path = tmp_path_factory.mktemp("distillops-cache")
    monkeypatch.setenv("DISTILLOPS_CACHE_DIR", str(path))
    return path


# MLflow keeps the URIs that mlflow.set_tracking_uri / set_registry_uri set in module globals (and copies
# the tracking URI into the environment); a test that sets them, directly or through pipeline code it runs
# in-process, would otherwise point every later test on the same worker at its store
_MLFLOW_URI_GLOBALS = {
    "mlflow.tracking._tracking_service.utils": "_tracking_uri",
    "mlflow.tracking._model_registry.utils": "_registry_uri",
}
_MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_uris_restored() -> Iterator[None]:
    """Each test starts from the MLflow URIs of its environment, whatever the tests before it set."""
    saved = {m: getattr(sys.modules[m], a) for m, a in _MLFLOW_URI_GLOBALS.items() if m in sys.modules}
    env = {key: os.environ.get(key) for key in _MLFLOW_URI_ENV}
    yield
    for module, attr in _MLFLOW_URI_GLOBALS.items():
        if module in sys.modules:
            setattr(sys.modules[module], attr, saved.get(module))
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    return uri


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Install a real (if minimal) distribution on sys.path: a dist-info folder plus its modules.

    ``fake_dist("acme-plugins", "1.2.0", {"distillops.losses": {"huber": "acme_losses:huber"}},
    {"acme_losses.py": "def huber(): ..."})``
    """
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created: list[str] = []

    def make(
        name: str,
        version: str,
        entry_points: dict[str, dict[str, str]],
        modules: dict[str, str] | None = None,
    ) -> Path:
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for filename, source in (modules or {}).items():
            (root / filename).write_text(textwrap.dedent(source))
            created.append(filename.removesuffix(".py"))
        importlib.invalidate_caches()
        from pipeline import registry

        registry.rescan()
        return info

    yield make
    for mod in created:
        sys.modules.pop(mod, None)
    from pipeline import registry

    registry.rescan()


def at_once(action: Callable[[], object], processes: int) -> tuple[list[str], list[int]]:
    """Run ``action`` in ``processes`` forked processes released at the same instant (what was imported
    before is shared, so they start fast); each one's outcome ("ok" or its exception) and the pids."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()

    def run() -> None:
        start.wait()
        try:
            action()
            results.put("ok")
        except Exception as exc:  # the failure is what the caller reports
            results.put(f"{type(exc).__name__}: {exc}")

    procs = [ctx.Process(target=run) for _ in range(processes)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    return [results.get(timeout=5) for _ in procs], [proc.pid for proc in procs]
