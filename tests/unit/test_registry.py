"""Plugin discovery, loading and building, including broken, non-callable, conflicting and failing
plugins, with real (minimal) distributions installed on sys.path by the ``fake_dist`` fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.cli import plugin_rows
from pipeline.errors import PluginError
from pipeline.params import PluginSpec
from pipeline.selection import Selected, create

GOOD_LOSS = """
def huber(delta: float = 1.0):
    \"\"\"Huber loss on logits.\"\"\"
    import torch
    def loss(inputs):
        return torch.nn.functional.huber_loss(inputs.student_logits, inputs.teacher_logits, delta=delta)
    return loss
"""


def test_builtins_are_discovered_from_entry_points_with_distribution():
    assert {"flip", "crop", "rotation"} <= set(registry.find("augmenters"))
    assert {"ce", "kd"} <= set(registry.find("losses"))
    assert {"resnet8", "lenet5"} <= set(registry.find("models"))
    info = registry.find("losses")["kd"]
    assert info.provenance.startswith("distillops==")
    assert info.tag == "plugins.losses.kd"


def test_discovery_does_not_import_plugin_modules(fake_dist):
    fake_dist(
        "acme-lazy",
        "0.1",
        {"distillops.losses": {"lazy": "acme_lazy:factory"}},
        {"acme_lazy.py": "raise RuntimeError('imported too early')\n"},
    )
    found = registry.find("losses")
    assert "lazy" in found
    assert "acme_lazy" not in sys.modules


def test_third_party_plugin_builds_and_reports_its_distribution(fake_dist):
    fake_dist(
        "acme-losses",
        "1.2.0",
        {"distillops.losses": {"huber": "acme_losses:huber"}},
        {"acme_losses.py": GOOD_LOSS},
    )
    loss, info = create("losses", PluginSpec("huber", {"delta": 0.5}))
    assert callable(loss)
    assert info.provenance == "acme-losses==1.2.0"


def test_broken_import_is_listed_as_broken_and_others_keep_working(fake_dist):
    fake_dist(
        "acme-broken",
        "0.3",
        {"distillops.losses": {"broken": "acme_broken:factory"}},
        {"acme_broken.py": "import not_a_real_module_xyz\n"},
    )
    rows = {r["name"]: r for r in plugin_rows() if r["group"] == "losses"}
    assert rows["broken"]["status"].startswith("broken")
    assert "acme-broken==0.3" in rows["broken"]["status"]
    assert "ModuleNotFoundError" in rows["broken"]["status"]
    assert rows["kd"]["status"] == "ok"
    create("losses", PluginSpec("kd"))  # still works
    with pytest.raises(PluginError) as err:
        create("losses", PluginSpec("broken"))
    message = str(err.value)
    assert "acme-broken==0.3" in message
    assert "broken = acme_broken:factory" in message
    assert "not_a_real_module_xyz" in message


def test_non_callable_entry_point_is_reported_the_same_way(fake_dist):
    fake_dist(
        "acme-const",
        "2.0",
        {"distillops.augmenters": {"const": "acme_const:VALUE"}},
        {"acme_const.py": "VALUE = 42\n"},
    )
    rows = {r["name"]: r for r in plugin_rows() if r["group"] == "augmenters"}
    assert "not callable" in rows["const"]["status"] and "acme-const==2.0" in rows["const"]["status"]
    assert rows["flip"]["status"] == "ok"
    with pytest.raises(PluginError, match=r"const = acme_const:VALUE.*acme-const==2.0.*not callable"):
        create("augmenters", PluginSpec("const"))


def test_same_name_from_two_distributions_fails_naming_both(fake_dist):
    fake_dist(
        "acme-a",
        "1.0",
        {"distillops.losses": {"twin": "acme_a:f"}},
        {"acme_a.py": GOOD_LOSS.replace("huber", "f")},
    )
    fake_dist(
        "acme-b",
        "2.0",
        {"distillops.losses": {"twin": "acme_b:f"}},
        {"acme_b.py": GOOD_LOSS.replace("huber", "f")},
    )
    with pytest.raises(PluginError) as err:
        create("losses", PluginSpec("twin"))
    assert "acme-a==1.0" in str(err.value) and "acme-b==2.0" in str(err.value)
    rows = {r["name"]: r for r in plugin_rows() if r["group"] == "losses"}
    assert rows["twin"]["status"].startswith("conflict")
    create("losses", PluginSpec("ce"))  # the rest of the group is unaffected


def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(PluginError) as err:
        create("losses", PluginSpec("kdd"))
    assert "Did you mean 'kd'?" in str(err.value)
    assert "ce" in str(err.value)


def test_unknown_keyword_lists_accepted_ones():
    with pytest.raises(PluginError) as err:
        create("losses", PluginSpec("kd", {"temp": 3}))
    assert "'temp'" in str(err.value) and "temperature" in str(err.value)


def test_model_factories_get_classes_and_channels_but_users_cannot_pass_them():
    model, _ = create("models", PluginSpec("lenet5"), num_classes=7, in_channels=1)
    assert model.fc.out_features == 7
    with pytest.raises(PluginError, match="num_classes"):
        Selected.resolve("student.model", "models", PluginSpec("lenet5", {"num_classes": 3}))


def test_factory_error_at_build_names_plugin():
    with pytest.raises(PluginError, match=r"kd.*temperature must be > 0"):
        create("losses", PluginSpec("kd", {"temperature": -1}))


def test_cli_plugins_list_json():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    kd = next(r for r in rows if r["group"] == "losses" and r["name"] == "kd")
    assert kd["distribution"].startswith("distillops==") and kd["status"] == "ok" and kd["summary"]


def test_cli_plugins_list_table_shows_group_name_distribution():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "plugins", "list"], capture_output=True, text=True, check=True
    ).stdout
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["group", "name", "distribution", "status"]
    assert any(
        line.split()[:3] == ["models", "lenet5", line.split()[2]] and "distillops==" in line for line in lines
    )


def test_cli_markdown_table_lists_parameters_with_defaults():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "plugins",
            "list",
            "--markdown",
            "--distribution",
            "distillops",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("| group | name | parameters")
    assert "| losses | `kd` | `temperature=4.0`, `standardize=false` |" in out
    assert '`direction="horizontal"`' in out
    assert all(line.count("|") >= 5 for line in lines)
    ours = [i for g in registry.GROUPS for i in registry.find(g).values() if i.distribution == "distillops"]
    assert len(lines) - 2 == len(ours)  # one row per built-in


def test_readme_plugin_table_is_current():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from readme_plugins import builtin_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert builtin_table() in readme, "README's plugin table is stale: run `make readme`"


def test_entry_points_are_scanned_once_per_process(monkeypatch):
    calls = []
    real = registry.entry_points

    def counting(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(registry, "entry_points", counting)
    registry.rescan()
    try:
        for group in registry.GROUPS:
            registry.find(group)
        for name in ("kd", "ce", "dkd"):
            Selected.resolve(f"distill.losses[{name}]", "losses", PluginSpec(name))
        Selected.resolve("student.model", "models", PluginSpec("lenet5"))
        assert calls == [{}]  # one scan of all distributions, every group selected from it
    finally:
        registry.rescan()
