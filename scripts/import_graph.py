"""The project's import graph, and the rules it must keep.

    python scripts/import_graph.py            # print each module's internal imports, check the rules
    python scripts/import_graph.py --deps     # also print each DVC stage's import closure vs its deps

Every ``import`` statement counts, at module level or inside a function. Rules:

1. A stage module (``pipeline/<stage>.py`` for the six stages of dvc.yaml) imports no other stage,
   and no core module imports a stage.
2. No cycles among the project's modules.
3. (``--deps``, and the test suite) Each stage's ``deps:`` in dvc.yaml cover every project module in its
   import closure that can change the stage's results (see ``RESULT_NEUTRAL``), list no module
   outside it, and, when the closure loads plugins through the registry, include ``plugins``.

Exit status 1 when a rule is broken.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "plugins")
STAGES = ("prepare", "teacher", "distill", "transfer", "export", "evaluate")
# Modules in a stage's import closure that cannot change what the stage writes, and why. They are
# left out of the stage's DVC deps, so editing them does not rerun the pipeline.
RESULT_NEUTRAL = {
    "pipeline/__init__.py": "only reads the package version",
    "pipeline/tracking.py": "MLflow logging: what is recorded about a run, not what the run computes",
    "pipeline/provenance.py": "records which MLflow run wrote the outputs, not what they compute",
    "pipeline/model_registry.py": "registry aliases and tags in MLflow, not what a stage computes",
    "pipeline/atomic.py": "how files are written (temp file + rename), not what they hold",
    "pipeline/dvc_restore.py": "runs only after a stage failed, to put back its previous outputs",
    "pipeline/interrupts.py": "signal handling; a resumed run ends bit-identical to an uninterrupted one",
    "pipeline/errors.py": "exception classes and messages",
    "pipeline/runner.py": "argument parsing, start-up checks and exit codes",
    "pipeline/launch.py": "starts a stage's training processes; what each computes is pipeline/distributed.py",
    "pipeline/report.py": "the printed summary of a run's results",
    "plugins/__init__.py": "empty package marker",
}
# the directory whose modules the registry loads through entry points (not through import statements)
PLUGINS_DIR = "plugins"
REGISTRY = "pipeline/registry.py"


def module_file(name: str) -> str | None:
    """'pipeline.data' -> 'pipeline/data.py' (or a package's __init__.py), for project modules only."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


def imports_of(path: str) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline import data` imports pipeline.data; `from pipeline.data import Split` imports
            # pipeline.data
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b imports a (its __init__) too
                file = module_file(".".join(parts[:i]))
                if file is not None and file != path:
                    found.add(file)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    return {f: imports_of(f) for f in files}


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for dep in g.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def stage_file(stage: str) -> str:
    return f"pipeline/{stage}.py"


def stage_violations(g: dict[str, set[str]]) -> list[str]:
    stage_files = {stage_file(s) for s in STAGES}
    out = []
    for module, deps in sorted(g.items()):
        for dep in sorted(deps & stage_files):
            kind = "stage" if module in stage_files else "core module"
            out.append(f"{kind} {module} imports the stage {dep}")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once, as a list of modules (Tarjan's strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def dvc_code_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Each stage's deps that are project code (files or folders under pipeline/ or plugins/)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {
        name: [d for d in stage.get("deps", []) if str(d).split("/")[0] in PACKAGES]
        for name, stage in stages.items()
    }


def _covered(module: str, deps: list[str]) -> bool:
    return any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)


def deps_problems(g: dict[str, set[str]], dvc_deps: dict[str, list[str]]) -> list[str]:
    problems = []
    for stage in STAGES:
        deps = dvc_deps.get(stage, [])
        needed = closure(g, stage_file(stage))
        must = sorted(m for m in needed if m not in RESULT_NEUTRAL)
        for module in must:
            if not _covered(module, deps):
                problems.append(f"stage '{stage}': {module} is in its import closure but not in its deps")
        if REGISTRY in needed and PLUGINS_DIR not in deps:
            problems.append(
                f"stage '{stage}': loads plugins through the registry but does not depend on '{PLUGINS_DIR}'"
            )
        for dep in deps:
            if dep.endswith(".py") and dep not in must:
                why = RESULT_NEUTRAL.get(dep, "not in its import closure")
                problems.append(f"stage '{stage}': lists {dep} in its deps, but it is {why}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deps", action="store_true", help="also show each stage's closure and DVC deps")
    args = parser.parse_args(argv)
    g = graph()
    for module, deps in g.items():
        print(f"{module}: {', '.join(sorted(deps)) or '-'}")
    problems = stage_violations(g) + [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]
    if args.deps:
        dvc_deps = dvc_code_deps()
        for stage in STAGES:
            print(f"\nstage {stage}: closure {', '.join(sorted(closure(g, stage_file(stage))))}")
            print(f"  dvc deps: {', '.join(dvc_deps.get(stage, []))}")
        problems += deps_problems(g, dvc_deps)
    print()
    for p in problems:
        print(f"FAIL {p}")
    print(
        "ok: stages import only core modules, no cycles" + (", deps complete" if args.deps else "")
        if not problems
        else f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
