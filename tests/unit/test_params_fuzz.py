"""Fuzzing the params file: whatever a user writes, every stage's start-up accepts it or stops with one
line naming what is wrong (property-based, with hypothesis).

Each example takes a valid params document (the repository's params.yaml, or the smoke-test one of
``tests/conftest.py``) and applies one to three mutations: unknown keys (top level and nested), missing
keys, values of the wrong type, out-of-range numbers (negative, zero, huge, NaN, infinite), malformed
plugin selections (unknown names, a plugin given as a number or a list, a selection without ``name``, bad
options), odd unicode in keys and values, deep nesting, and YAML the dumper never writes (dates, tags,
anchors). The YAML is written to a file and ``runner.start`` runs for every stage, in process: it loads the
params and resolves and builds every plugin selection, but never trains (``runner.main`` is not called
here: with a valid file it would train). A second property keeps the mutations inside the plugin
selections, so that most of its documents get as far as building the plugins.

Every start-up must succeed or raise :class:`DistillopsError` with a one-line message that names what is
wrong: a params error names the file and a dotted key related to a mutation (the key itself, a key inside
it or around it, or a key it is checked against), or, where YAML cannot be read at all, the line; a plugin
error names the selection's key and the plugin; a missing ``summary.json`` (only when ``paths.prepared``
was mutated) names that file. Any other exception is a traceback a user would see. A NaN or an infinity
left where the start-up reads must be refused. Real subprocesses check what a user sees for a few examples
the fuzzing found: exit code 2 and one line on stderr.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import runner
from pipeline.data import DataFormat
from pipeline.errors import DistillopsError, ParamsError, PluginError
from pipeline.registry import MODEL_ARGS, accepted_keywords, find
from pipeline.selection import LOSS_KEYS, MODEL_KEYS
from tests.conftest import REPO, tiny_params_dict

STAGES = ("prepare", "teacher", "distill", "transfer", "export", "evaluate")
BASES = (yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), tiny_params_dict())

# the selections of a params document, by plugin group: (dotted key, is it a list of selections)
SELECTIONS = {
    "models": [(key, False) for key in MODEL_KEYS],
    "losses": [(key, True) for key in LOSS_KEYS],
    "augmenters": [("augment.ops", True)],
    "datasets": [("data.dataset", False), ("target.dataset", False)],
}
# every installed plugin, by group, with the keywords its factory takes (what params may set)
PLUGINS = {
    group: {
        name: [k for k in accepted_keywords(info.load())[0] if k not in MODEL_ARGS]
        for name, info in find(group).items()
    }
    for group in SELECTIONS
}
# keys checked against others: a change to the first can fail naming the second
CHECKED_AGAINST = {
    "runtime.processes": ("teacher.batch_size", "distill.batch_size", "transfer.batch_size"),
    "data.unlabelled_fraction": ("distill.exclude_classes",),
    "distill.exclude_classes": ("data.unlabelled_fraction",),
    "distill.procedure": ("distill.warm_start",),
    "distill.warm_start": ("distill.procedure",),
}
# what the start-up does not build, so a NaN or infinity there is not for it to refuse: the datasets (prepare
# loads them), every "options" mapping (a torchvision model's builder keywords, passed on as they are) and,
# in prepare, the models (it builds them once it has read the data)
NOT_BUILT = ("data.dataset", "target.dataset")

TOP = "<top level>"
NAN, INF = float("nan"), float("inf")
# numbers chosen to fail fast wherever they land: a model of width 10**18 cannot be allocated, while one of
# width 1000 could be (gigabytes, seconds)
ODD_NUMBERS = [
    0, -1, -0.0, -1e-9, 0.5, 10**18, 2**63, -(2**63), 10**400, 1e308, -1e308, 5e-324, NAN, INF, -INF,
]  # fmt: skip
ODD_TEXT = [
    "\n", "\r\n", "\t", "\x00", "\x0b", "\x1b[31m", "\x85", "\u2028", "\u200b", "\u202e", "\ufeff",
    "é", "İ", "ﬁ", "日本", "🙂", "e\u0301", "'", '"', ": ", " #", "- ", "{", "[", "&a", "*a", "!!str",
    "%", "@", "`", "\\", ".", " ", "",
]  # fmt: skip


def shown(key: Any) -> str:
    """A key as messages show it: as written, or its repr when it would not show as written on one line
    (a control or line-break character, surrounding spaces, nothing)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def child(prefix: str, key: Any, in_list: bool) -> str:
    if in_list:
        return f"{prefix}[{key}]"
    return f"{prefix}.{shown(key)}" if prefix != TOP else shown(key)


@dataclass
class Raw:
    """A value written into the YAML text as it is: YAML a user may write that the dumper never would
    (a date, tags, anchors, a number of thousands of digits, nesting deeper than the dumper recurses)."""

    text: str


def nested(depth: int, mapping: bool) -> Raw:
    if mapping:
        return Raw("{a: " * depth + "1" + "}" * depth)
    return Raw("[" * depth + "1" + "]" * depth)


@dataclass
class Example:
    doc: Any
    scope: Callable[[str], bool] | None = None  # which dotted keys the mutations change (None: any)
    touched: list[str] = field(default_factory=list)  # the dotted keys the mutations changed
    kinds: list[str] = field(default_factory=list)

    def nodes(self, node: Any = None, name: str = TOP, path: tuple = ()) -> Iterator[tuple[tuple, str, Any]]:
        """(path, dotted key, value) of every node, the root first."""
        node = self.doc if not path else node
        yield path, name, node
        if isinstance(node, dict):
            for k, v in node.items():
                yield from self.nodes(v, child(name, k, False), (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from self.nodes(v, child(name, i, True), (*path, i))

    def candidates(self) -> list[tuple[tuple, str, Any]]:
        """The nodes a mutation may change: those in scope (the root only when unscoped)."""
        return [node for node in self.nodes() if self.scope is None or self.scope(node[1])]

    def set(self, path: tuple, value: Any) -> None:
        if not path:
            self.doc = value
            return
        parent = self.doc
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value

    def get(self, dotted: str) -> tuple[tuple, Any] | None:
        return next(((p, v) for p, n, v in self.nodes() if n == dotted), None)


def kind(value: Any) -> str:
    for name, types in (("none", type(None)), ("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):
            return name
    return "list" if isinstance(value, list) else "dict" if isinstance(value, dict) else "other"


odd_text = st.lists(st.sampled_from(ODD_TEXT) | st.text(max_size=3), min_size=1, max_size=4).map("".join)
keys = odd_text | st.integers(-2, 2) | st.booleans() | st.sampled_from(["epoch", "lrr", "Seed", "name "])
scalars = {
    "none": st.none(),
    "bool": st.booleans(),
    "int": st.integers(-3, 16) | st.sampled_from([n for n in ODD_NUMBERS if isinstance(n, int)]),
    "float": st.floats(-8, 8)
    | st.sampled_from([float(n) for n in ODD_NUMBERS if isinstance(n, float) or abs(n) < 2**64]),
    "str": odd_text | st.sampled_from(["auto", "cpu", "fp16", "train", "kd", "lenet5", "1", "true"]),
}
anything = st.recursive(
    st.one_of(*scalars.values()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)
by_kind = {
    **scalars,
    "list": st.lists(anything, max_size=3),
    "dict": st.dictionaries(keys, anything, max_size=3),
}


def unknown_key(data: st.DataObject, ex: Example) -> None:
    mappings = [(p, n, v) for p, n, v in ex.candidates() if isinstance(v, dict)]
    if not mappings:
        return
    path, name, node = data.draw(st.sampled_from(mappings))
    key = data.draw(keys.filter(lambda k: k not in node))
    node[key] = data.draw(anything)
    ex.touched.append(child(name, key, False))


def missing_key(data: st.DataObject, ex: Example) -> None:
    mappings = [(p, n, v) for p, n, v in ex.candidates() if isinstance(v, dict) and v]
    if not mappings:
        return
    path, name, node = data.draw(st.sampled_from(mappings))
    key = data.draw(st.sampled_from(list(node)))
    del node[key]
    ex.touched.append(child(name, key, False))


def wrong_type(data: st.DataObject, ex: Example) -> None:
    path, name, value = data.draw(st.sampled_from(ex.candidates()))
    other = data.draw(st.sampled_from([k for k in by_kind if k != kind(value)]))
    ex.set(path, data.draw(by_kind[other]))
    ex.touched.append(name)


def odd_number(data: st.DataObject, ex: Example) -> None:
    numbers = [(p, n) for p, n, v in ex.candidates() if kind(v) in ("int", "float")]
    if not numbers:
        return
    path, name = data.draw(st.sampled_from(numbers))
    ex.set(path, data.draw(st.sampled_from(ODD_NUMBERS)))
    ex.touched.append(name)


def odd_unicode(data: st.DataObject, ex: Example) -> None:
    """An odd string for a value that is a string, or an odd name for a key."""
    strings = [(p, n) for p, n, v in ex.candidates() if isinstance(v, str)]
    if strings and data.draw(st.booleans()):
        path, name = data.draw(st.sampled_from(strings))
        ex.set(path, data.draw(odd_text))
        ex.touched.append(name)
        return
    mappings = [(n, v) for _, n, v in ex.candidates() if isinstance(v, dict) and v]
    if not mappings:
        return
    name, node = data.draw(st.sampled_from(mappings))
    old = data.draw(st.sampled_from(list(node)))
    new = data.draw(odd_text.filter(lambda k: k not in node))
    node[new] = node.pop(old)
    ex.touched += [child(name, old, False), child(name, new, False)]


def deep(data: st.DataObject, ex: Example) -> None:
    path, name, _ = data.draw(st.sampled_from([n for n in ex.candidates() if n[0]] or ex.candidates()))
    # from a few levels to more than the YAML reader's recursion allows (~500 under pytest; deeper values
    # only take longer: the reader's scanner is quadratic in the depth of flow collections)
    depth = data.draw(st.integers(2, 60) | st.sampled_from([200, 400, 700]))
    ex.set(path, nested(depth, data.draw(st.booleans())))
    ex.touched.append(name)


RAW_YAML = [
    "2024-13-45",  # a date that does not exist
    "!!timestamp 2021-02-30",
    "9" * 5000,  # more digits than Python converts
    "0x_",
    "!!float abc",
    "!!int 1.5",
    "1.0e+400",
    "-.inf",
    ".NaN",
    "12:30:00",  # YAML 1.1 reads a base-60 integer
    "0o17",
    "1_000",
    "yes",
    "~",
    "!!binary aGk=",
    "!!set {a, b}",
    "!!python/object/apply:os.system [echo]",
    "*nowhere",
    "&loop [*loop]",
    "&cycle {a: *cycle}",
    "'unterminated",
]


def raw_yaml(data: st.DataObject, ex: Example) -> None:
    path, name, _ = data.draw(st.sampled_from([n for n in ex.candidates() if n[0]] or ex.candidates()))
    ex.set(path, Raw(data.draw(st.sampled_from(RAW_YAML))))
    ex.touched.append(name)


def bad_selection(data: st.DataObject, ex: Example) -> None:
    """A plugin selection replaced: an unknown name, another plugin, a number, a list, no name, a name that
    is no text, or options (known or not) with odd values."""
    group = data.draw(st.sampled_from(sorted(SELECTIONS)))
    slots = []  # (path, dotted key, the selection there, new?): each selection, and one more of a list
    for key, is_list in SELECTIONS[group]:
        found = ex.get(key)
        if found is None:
            continue
        if not is_list:
            slots.append((found[0], key, found[1], False))
        elif isinstance(found[1], list):
            slots += [((*found[0], i), f"{key}[{i}]", v, False) for i, v in enumerate(found[1])]
            slots.append(((*found[0], len(found[1])), f"{key}[{len(found[1])}]", None, True))
    if not slots:
        return
    path, name, current, new = data.draw(st.sampled_from(slots))
    names = sorted(PLUGINS[group])
    plugin = data.draw(st.sampled_from(names))
    how = data.draw(st.sampled_from(["unknown", "other", "number", "list", "no name", "no text", "options"]))
    value: Any
    if how == "unknown":
        near = [
            plugin + "s",
            plugin[:-1],
            plugin.upper(),
            f" {plugin}",
            *PLUGINS["models"],
            *PLUGINS["losses"],
        ]
        wrong = data.draw(st.sampled_from(near) | odd_text)
        value = {"name": wrong} if data.draw(st.booleans()) else wrong
    elif how == "other":  # another plugin of the group, as a bare name or with no options
        value = plugin if data.draw(st.booleans()) else {"name": plugin}
    elif how == "number":
        value = data.draw(scalars["int"] | scalars["float"])
    elif how == "list":
        value = data.draw(st.lists(st.sampled_from(names) | anything, max_size=3))
    elif how == "no name":
        value = data.draw(st.dictionaries(st.sampled_from([*PLUGINS[group][plugin], "weight"]), anything))
    elif how == "no text":
        value = {"name": data.draw(anything.filter(lambda v: not isinstance(v, str)))}
    else:  # the selection there (or another plugin) with options of odd values, its own or unknown ones
        value = (
            dict(current) if isinstance(current, dict) and current.get("name") in names else {"name": plugin}
        )
        own = PLUGINS[group][value["name"]] + (["weight"] if group == "losses" else [])
        for option in data.draw(st.lists(st.sampled_from([*own, "nonexistent"]), min_size=1, unique=True)):
            value[option] = data.draw(st.sampled_from(ODD_NUMBERS) | anything)
    if new:
        ex.get(name.rsplit("[", 1)[0])[1].append(value)
    else:
        ex.set(path, value)
    ex.touched.append(name)


MUTATIONS = {
    "unknown key": unknown_key,
    "missing key": missing_key,
    "wrong type": wrong_type,
    "odd number": odd_number,
    "odd unicode": odd_unicode,
    "deep": deep,
    "bad selection": bad_selection,
    "raw yaml": raw_yaml,
}


def to_yaml(doc: Any) -> str:
    """The document as YAML, as a user would write it (unicode as is), with the raw values put in."""
    raw: list[Raw] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            raw.append(node)
            return f"RAW_{len(raw) - 1}_VALUE"
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    swapped = swap(doc)
    text = yaml.safe_dump(swapped, allow_unicode=True, sort_keys=False)
    if repr(yaml.safe_load(text)) != repr(swapped):  # yaml writes some line breaks (\x85) as they are, then
        text = yaml.safe_dump(swapped, sort_keys=False)  # reads them as spaces: escape all but ASCII then
    assert repr(yaml.safe_load(text)) == repr(swapped), f"yaml does not read back what it wrote: {text}"
    for i, value in enumerate(raw):
        text = text.replace(f"RAW_{i}_VALUE", value.text, 1)
    return text


def _within(inner: str, outer: str) -> bool:
    return outer == TOP or inner == outer or inner.startswith((f"{outer}.", f"{outer}["))


def related(named: str, touched: str) -> bool:
    """Whether a message naming ``named`` is about the mutation of ``touched``: the same key, one inside
    it or around it, or a key checked against it."""
    if _within(named, touched) or _within(touched, named):
        return True
    return any(
        _within(key, touched) or _within(touched, key)
        for key, others in CHECKED_AGAINST.items()
        for other in others
        if _within(named, other)
    )


def non_finite_read(doc: Any, stage: str, name: str = TOP) -> str | None:
    """The dotted key of a NaN or infinity that the stage's start-up reads, if any."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return name
    if name in NOT_BUILT or name.endswith(".options") or (stage == "prepare" and name in MODEL_KEYS):
        return None
    if isinstance(doc, dict):
        found = (non_finite_read(v, stage, child(name, k, False)) for k, v in doc.items())
    elif isinstance(doc, list):
        found = (non_finite_read(v, stage, child(name, i, True)) for i, v in enumerate(doc))
    else:
        return None
    return next((key for key in found if key), None)
    if isinstance(doc, dict):
        return next((k for key, v in doc.items() if (k := non_finite_read(v, child(name, key, False)))), None)
    if isinstance(doc, list):
        return next((k for i, v in enumerate(doc) if (k := non_finite_read(v, child(name, i, True)))), None)
    return None


def check_message(exc: DistillopsError, params_file: Path, ex: Example, stage: str) -> None:
    message = str(exc)
    context = f"stage {stage}, mutations {ex.kinds} of {ex.touched}: {message!r}"
    assert len(message.splitlines()) == 1 and "\r" not in message, f"not one line: {context}"
    if isinstance(exc, ParamsError):
        assert message.startswith(f"{params_file}: "), f"does not name the params file: {context}"
        rest = message.removeprefix(f"{params_file}: ")
        # a key may itself hold ': ' (it is shown as written): try every split
        parts = rest.split(": ")
        named = [": ".join(parts[:i]) for i in range(1, len(parts))]
        if not any(related(n, t) for n in named for t in ex.touched):
            # the YAML reader fails before any key is known: on deep nesting (naming the file) and on YAML
            # it cannot read (naming the file and the line)
            assert ("deep" in ex.kinds and rest.startswith("nested too deeply")) or (
                "raw yaml" in ex.kinds and rest.startswith("not valid YAML: ") and ", line " in rest
            ), f"names no mutated key: {context}"
    elif isinstance(exc, PluginError):
        named = [": ".join(message.split(": ")[:i]) for i in range(1, len(message.split(": ")))]
        assert any(related(n, t) for n in named for t in ex.touched), f"names no mutated key: {context}"
        assert re.search(r"plugin ['\"]", message), f"names no plugin: {context}"
    else:
        prepared = [t for t in ex.touched if _within("paths.prepared", t)]
        assert prepared and stage != "prepare", f"unexpected {type(exc).__name__}: {context}"
        assert "summary.json" in message and "prepare" in message, f"says nothing of prepare: {context}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working directory with what ``prepare`` leaves for the other stages' start-up: summary.json."""
    root = tmp_path_factory.mktemp("fuzz")
    fmt = DataFormat(tuple(f"class {i}" for i in range(10)), 1, 28, 28, (0.286,), (0.353,))
    task = {"classes": list(fmt.classes), "format": fmt.to_json()}
    prepared = root / BASES[0]["paths"]["prepared"]
    prepared.mkdir(parents=True)
    (prepared / "summary.json").write_text(json.dumps({"source": task, "target": task}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield root


def test_every_base_document_starts_every_stage(workspace):
    """The fuzzing starts from valid documents: without a mutation, every stage starts."""
    for i, base in enumerate(BASES):
        path = workspace / f"base{i}.yaml"
        path.write_text(to_yaml(base), encoding="utf-8")
        for stage in STAGES:
            runner.start(stage, path)


def is_option(dotted: str) -> bool:
    """Whether a dotted key is inside a plugin selection: one of its options, or a part of one."""
    return not dotted.endswith(".name") and any(
        re.match(rf"{re.escape(key)}(\[\d+\])?\.", dotted)
        for group in SELECTIONS.values()
        for key, _ in group
    )


def check_start_up(workspace: Path, ex: Example) -> None:
    """Every stage's start-up on the mutated document: it succeeds (and then no NaN or infinity is left
    where it reads), or fails with one line naming what is wrong."""
    path = workspace / "params.yaml"
    path.write_text(to_yaml(ex.doc), encoding="utf-8")
    for stage in STAGES:
        try:
            runner.start(stage, path)
        except DistillopsError as exc:
            check_message(exc, path, ex, stage)
        else:
            nan_at = non_finite_read(ex.doc, stage)
            assert nan_at is None, f"stage {stage} accepted a NaN or infinity at {nan_at} ({ex.touched})"


def mutate(data: st.DataObject, ex: Example) -> Example:
    for name in data.draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3), "mutations"):
        ex.kinds.append(name)
        MUTATIONS[name](data, ex)
    return ex


# reproducible (derandomize: the same examples every run) and sized to a few hundred examples in well under
# a minute on two cores
FUZZ = settings(deadline=None, derandomize=True, database=None)


@settings(FUZZ, max_examples=200)
@given(data=st.data(), base=st.sampled_from(range(len(BASES))))
def test_any_params_document_starts_or_fails_with_one_line_naming_the_key(workspace, data, base):
    check_start_up(workspace, mutate(data, Example(copy.deepcopy(BASES[base]))))


@settings(FUZZ, max_examples=100)
@given(data=st.data(), base=st.sampled_from(range(len(BASES))))
def test_any_plugin_selection_builds_or_fails_with_one_line_naming_it(workspace, data, base):
    """The same, with the mutations inside the plugin selections: their options (most documents of the test
    above fail on the params alone, before any plugin is built), and whole selections (bad_selection)."""
    check_start_up(workspace, mutate(data, Example(copy.deepcopy(BASES[base]), scope=is_option)))


# examples the fuzzing found that once gave a traceback or a message of several lines
# (section, key, value, what the message says)
FOUND = {
    # the key was printed as written
    "a key with a line break": ("teacher", "epochs\nx", 3, "teacher.'epochs\\nx': unknown key"),
    # yaml's ValueError, and RecursionError
    "a date that does not exist": ("mlflow", "experiment", Raw("2024-13-45"), "(month must be in 1..12)"),
    "deep nesting": (None, "seed", nested(1000, True), "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_a_fuzzed_invalid_file_stops_prepare_with_exit_2_and_one_line(tmp_path, case):
    """What `python -m pipeline.prepare` shows for examples the fuzzing found (real subprocesses; the
    cases of test_stage_errors.py, a typo, an unknown plugin, a bad plugin value, are not repeated)."""
    section, key, value, says = FOUND[case]
    doc = tiny_params_dict()
    (doc[section] if section else doc)[key] = value
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(doc), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.prepare", "--params", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (
        result.stderr.startswith(f"error: stage 'prepare': {params}: ") and "Traceback" not in result.stderr
    )
    assert says in result.stderr
    assert not (tmp_path / "data").exists()
