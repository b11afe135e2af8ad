"""The cache behind ``distillops plugins list`` (pipeline.plugin_catalog): a warm listing imports no plugin
code (nor torch), shows the same rows as a cold one, and is invalidated when a plugin's code can have changed;
broken plugins are never cached. Real subprocesses and real (minimal) distributions from ``fake_dist``."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import plugin_catalog, registry
from pipeline.cli import markdown_table, plugin_rows

REPO = Path(__file__).resolve().parents[2]

V1 = '''
def huber(delta: float = 1.0):
    """Huber loss, first version.

    More text that is not part of the summary.
    """
    return lambda inputs: 0.0
'''

V2 = '''
def huber(delta: float = 2.0, reduction: str = "mean", *, beta=(1, 2)):
    """Huber loss, second version."""
    return lambda inputs: 0.0
'''

# the CLI run in-process inside a subprocess, reporting which modules it imported
IN_PROCESS = """
import contextlib, io, json, sys
from pipeline import cli, plugin_catalog
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main(["plugins", "list", *sys.argv[1:]])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({
    "code": code,
    "stdout": out.getvalue(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "plugins")),
    "losses_file": str(plugin_catalog.module_file("plugins.losses")),
}))
"""


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILLOPS_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "plugins", "list", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A cache warmed by one cold ``plugins list --json`` run, and that run's output."""
    cache = tmp_path_factory.mktemp("warm-cache")
    cold = _cli("--json", cache=cache).stdout
    broken = [f"{r['group']}/{r['name']}: {r['status']}" for r in json.loads(cold) if r["status"] != "ok"]
    assert not broken, f"built-in plugins must load for this test: {broken}"
    assert (cache / plugin_catalog.FILENAME).is_file()
    return cache, cold


@pytest.mark.parametrize(
    "fmt", [[], ["--json"], ["--markdown"], ["--markdown", "--distribution", "distillops"]]
)
def test_warm_listing_imports_neither_torch_nor_plugin_code(warm_cache, fmt):
    cache, cold_json = warm_cache
    env = {**os.environ, "DISTILLOPS_CACHE_DIR": str(cache)}
    run = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, *fmt],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    result = json.loads(run.stdout)
    assert result["code"] == 0
    assert result["modules"] == []
    # the cache key stamps the module file, found without importing it (editable install)
    assert result["losses_file"] == str(REPO / "plugins" / "losses.py")
    rows = json.loads(cold_json)
    if fmt == ["--json"]:
        assert result["stdout"] == cold_json  # same rows, same order, same parameter order
    elif fmt == ["--markdown"]:
        assert result["stdout"] == markdown_table(rows) + "\n"
    elif fmt:
        ours = [r for r in rows if r["distribution"].startswith("distillops==")]
        assert result["stdout"] == markdown_table(ours) + "\n"
    else:
        assert result["stdout"].splitlines()[0].split() == [
            "group",
            "name",
            "distribution",
            "status",
            "summary",
        ]
        assert len(result["stdout"].splitlines()) == len(rows) + 1


def test_cold_and_warm_rows_are_identical_and_warm_loads_nothing(monkeypatch, _plugin_cache):
    cold = plugin_rows()
    assert (_plugin_cache / plugin_catalog.FILENAME).is_file()

    def no_load(self):
        raise AssertionError(f"{self.name} was imported although it is cached")

    monkeypatch.setattr(registry.PluginInfo, "load", no_load)
    warm = plugin_rows()
    assert json.dumps(warm) == json.dumps(cold)  # order of rows and of parameters included
    assert markdown_table(warm) == markdown_table(cold)
    kd = next(r for r in warm if r["name"] == "kd")
    assert kd["status"] == "ok" and kd["parameters"]["temperature"] == "4.0" and kd["keywords"]


def _forget(module: str) -> None:
    """Make the next load re-import ``module`` (as a new process would)."""
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    registry.rescan()


def _row(name: str) -> dict:
    return next(r for r in plugin_rows() if r["group"] == "losses" and r["name"] == name)


def test_editing_the_module_file_invalidates_its_entry(fake_dist):
    info = fake_dist(
        "acme-cat", "1.0", {"distillops.losses": {"huber": "acme_cat:huber"}}, {"acme_cat.py": V1}
    )
    row = _row("huber")
    assert row["summary"] == "Huber loss, first version."
    assert row["parameters"] == {"delta": "1.0"}

    _forget("acme_cat")
    assert _row("huber") == row
    assert "acme_cat" not in sys.modules  # served from the cache

    # an edit in place, same distribution version (as in an editable install)
    module = info.parent / "acme_cat.py"
    before = module.stat().st_mtime_ns
    module.write_text(V2)
    os.utime(module, ns=(before + 2_000_000_000, before + 2_000_000_000))
    _forget("acme_cat")
    row = _row("huber")
    assert row["summary"] == "Huber loss, second version."
    assert list(row["parameters"].items()) == [("delta", "2.0"), ("reduction", '"mean"'), ("beta", "[1, 2]")]
    assert row["keywords"] == ["delta", "reduction", "beta"]


def test_upgrading_the_distribution_invalidates_its_entry(fake_dist):
    eps = {"distillops.losses": {"huber": "acme_up:huber"}}
    old = fake_dist("acme-up", "1.0", eps, {"acme_up.py": V1})
    assert _row("huber")["summary"] == "Huber loss, first version."
    assert _row("huber")["distribution"] == "acme-up==1.0"

    shutil.rmtree(old)  # pip uninstall + install of the new version
    fake_dist("acme-up", "2.0", eps, {"acme_up.py": V2})
    _forget("acme_up")
    row = _row("huber")
    assert row["distribution"] == "acme-up==2.0"
    assert row["summary"] == "Huber loss, second version."
    assert list(row["parameters"]) == ["delta", "reduction", "beta"]


def test_broken_plugins_are_listed_every_time_and_never_cached(fake_dist, _plugin_cache):
    info = fake_dist(
        "acme-broken",
        "0.3",
        {
            "distillops.losses": {"broken": "acme_broken:factory"},
            "distillops.augmenters": {"const": "acme_k:VALUE"},
        },
        {
            "acme_broken.py": "import acme_missing_dep_xyz\n\ndef factory():\n    '''Needs a dependency.'''\n",
            "acme_k.py": "VALUE = 42\n",
        },
    )
    for _ in range(2):  # cold, then with a warm cache: still imported and reported
        rows = {r["name"]: r for r in plugin_rows()}
        assert rows["broken"]["status"].startswith("broken")
        assert "acme-broken==0.3" in rows["broken"]["status"]
        assert "broken = acme_broken:factory" in rows["broken"]["status"]
        assert "ModuleNotFoundError" in rows["broken"]["status"]
        assert "not callable" in rows["const"]["status"] and "acme-broken==0.3" in rows["const"]["status"]
        assert rows["kd"]["status"] == "ok"
        cached = (_plugin_cache / plugin_catalog.FILENAME).read_text()
        assert "acme_broken" not in cached and "acme_k" not in cached
        assert registry.find("losses")["kd"].value in cached

    # the missing dependency gets installed: the next listing finds the plugin working
    (info.parent / "acme_missing_dep_xyz.py").write_text("")
    _forget("acme_broken")
    row = _row("broken")
    assert row["status"] == "ok" and row["summary"] == "Needs a dependency."
    sys.modules.pop("acme_missing_dep_xyz", None)


def test_conflicting_plugins_are_not_cached(fake_dist, _plugin_cache):
    fake_dist("acme-a", "1.0", {"distillops.losses": {"twin": "acme_ta:huber"}}, {"acme_ta.py": V1})
    fake_dist("acme-b", "1.0", {"distillops.losses": {"twin": "acme_tb:huber"}}, {"acme_tb.py": V1})
    for _ in range(2):
        assert _row("twin")["status"] == "conflict: also offered by acme-b==1.0"
    assert "twin" not in (_plugin_cache / plugin_catalog.FILENAME).read_text()


def test_module_file_is_found_without_importing_the_package(fake_dist):
    info = fake_dist("acme-pkg", "1.0", {"distillops.losses": {"deep": "acme_pkg.sub.mod:f"}})
    pkg = info.parent / "acme_pkg"
    (pkg / "sub" / "mod").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (pkg / "sub" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (pkg / "sub" / "mod" / "__init__.py").write_text("def f(): ...\n")
    (pkg / "flat.py").write_text("def f(): ...\n")
    importlib.invalidate_caches()
    assert plugin_catalog.module_file("acme_pkg.sub.mod") == pkg / "sub" / "mod" / "__init__.py"
    assert plugin_catalog.module_file("acme_pkg.flat") == pkg / "flat.py"
    assert plugin_catalog.module_file("acme_pkg.nope") is None
    assert plugin_catalog.module_file("acme_not_installed_xyz") is None
    assert not any(m.startswith("acme_pkg") for m in sys.modules)


def test_unlocatable_module_is_keyed_on_the_version(fake_dist):
    eps = {"distillops.losses": {"ghost": "acme_ghost:f"}}
    old = fake_dist("acme-ghost", "1.0", eps)
    ghost = registry.find("losses")["ghost"]
    env = plugin_catalog.environment_fingerprint()
    key = plugin_catalog.cache_key(ghost, env)
    assert json.loads(key)[-1] == []  # no file stamp
    shutil.rmtree(old)
    fake_dist("acme-ghost", "1.1", eps)
    assert plugin_catalog.cache_key(registry.find("losses")["ghost"], env) != key


def test_unwritable_or_corrupt_cache_does_not_break_the_listing(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DISTILLOPS_CACHE_DIR", str(blocker))
    assert _row("kd")["status"] == "ok"

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / plugin_catalog.FILENAME).write_text("{not json")
    monkeypatch.setenv("DISTILLOPS_CACHE_DIR", str(cache))
    assert _row("kd")["summary"]
    assert json.loads((cache / plugin_catalog.FILENAME).read_text())["format"] == plugin_catalog.FORMAT


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLOPS_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert plugin_catalog.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DISTILLOPS_CACHE_DIR")
    assert plugin_catalog.cache_dir() == tmp_path / "xdg" / "distillops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert plugin_catalog.cache_dir() == tmp_path / "home" / ".cache" / "distillops"


def test_old_entries_are_pruned_but_this_listing_keeps_its_own(monkeypatch, _plugin_cache):
    monkeypatch.setattr(plugin_catalog, "MAX_ENTRIES", 5)
    stale = {f"stale-{i}": {"summary": "", "parameters": [], "stored": i} for i in range(10)}
    (_plugin_cache / plugin_catalog.FILENAME).write_text(json.dumps({"format": 1, "entries": stale}))
    rows = [r for r in plugin_rows() if r["status"] == "ok"]
    entries = json.loads((_plugin_cache / plugin_catalog.FILENAME).read_text())["entries"]
    assert len(entries) == len(rows)  # more than MAX_ENTRIES: every plugin of this listing is kept
    assert not any(k.startswith("stale-") for k in entries)
