"""The import graph keeps its rules, and every stage's DVC deps cover the code that can change its
results (scripts/import_graph.py, which anyone can run)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ig = _tool()


def test_stages_import_only_core_modules_and_there_are_no_cycles():
    g = ig.graph()
    assert ig.stage_violations(g) == []
    assert ig.cycles(g) == []


def test_every_stage_depends_on_the_code_that_can_change_its_results():
    assert ig.deps_problems(ig.graph(), ig.dvc_code_deps()) == []


def test_the_rules_catch_what_they_are_for():
    """A stage importing a stage, a cycle, a missing dep and a stale dep are each reported."""
    g = {
        "pipeline/evaluate.py": {"pipeline/teacher.py", "pipeline/training.py"},
        "pipeline/teacher.py": {"pipeline/training.py"},
        "pipeline/training.py": {"pipeline/data.py", "pipeline/registry.py"},
        "pipeline/data.py": {"pipeline/training.py"},
        "pipeline/registry.py": set(),
    }
    assert ig.stage_violations(g) == ["stage pipeline/evaluate.py imports the stage pipeline/teacher.py"]
    assert ig.cycles(g) == [["pipeline/data.py", "pipeline/training.py"]]
    problems = ig.deps_problems(
        g, {"teacher": ["pipeline/teacher.py", "pipeline/training.py", "pipeline/modelio.py"]}
    )
    assert "stage 'teacher': pipeline/data.py is in its import closure but not in its deps" in problems
    assert "stage 'teacher': loads plugins through the registry but does not depend on 'plugins'" in problems
    assert any("lists pipeline/modelio.py" in p for p in problems)


def test_function_level_imports_count():
    assert "pipeline/report.py" in ig.imports_of("pipeline/evaluate.py")
    found = ig.imports_of("pipeline/plugin_checks.py")
    assert "pipeline/onnx_model.py" in found  # imported inside check_model


@pytest.mark.parametrize("flag", [[], ["--deps"]])
def test_the_command_passes(flag):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_graph.py"), *flag], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "ok: stages import only core modules, no cycles" in out.stdout
