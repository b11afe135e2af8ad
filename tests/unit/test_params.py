from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import LossSpec, Params, PluginSpec, flatten, load_params, parse_params
from tests.conftest import REPO


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def write(tmp_path: Path, data: dict) -> Path:
    """The repository's params.yaml with ``data`` merged over it."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load((REPO / "params.yaml").read_text()), data)))
    return path


def test_repository_params_file_parses():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params) and p.distill.losses[0].name == "kd"


def test_a_missing_key_is_named(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["distill"]["epochs"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"distill\.epochs: missing"):
        load_params(path)


@pytest.mark.parametrize(
    "content, says",
    [
        (b"seed: 0\nname: caf\xe9\n", "not UTF-8"),  # Latin-1
        (b"seed: [0\n", "not valid YAML"),
    ],
)
def test_an_unreadable_params_file_gets_one_line_naming_it(tmp_path, content, says):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_a_folder_instead_of_a_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="cannot be read"):
        load_params(tmp_path)


def test_every_default_in_params_yaml_has_a_comment_saying_why():
    for number, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if (
            stripped
            and not stripped.startswith(("#", "- {", "- "))
            and ":" in stripped
            and not stripped.endswith(":")
        ):
            assert "#" in line, f"params.yaml line {number} has no comment: {line!r}"


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, {"teacher": {"epoch": 3}})
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    assert "teacher.epoch" in message
    assert "did you mean 'teacher.epochs'" in message


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ParamsError, match=r"sed: unknown key \(did you mean 'seed'\?\)"):
        load_params(write(tmp_path, {"sed": 1}))


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"teacher": {"epochs": "five"}}, "teacher.epochs", "an integer"),
        ({"teacher": {"epochs": True}}, "teacher.epochs", "an integer"),
        ({"teacher": {"lr": "fast"}}, "teacher.lr", "a number"),
        ({"runtime": {"deterministic": 1}}, "runtime.deterministic", "true or false"),
        ({"data": {"train_limit": 2.5}}, "data.train_limit", "an integer"),
        ({"augment": {"ops": {"name": "flip"}}}, "augment.ops", "a list"),
        ({"distill": {"losses": [{"weight": 1.0}]}}, "distill.losses[0]", "'name'"),
        ({"distill": {"losses": [{"name": "kd", "weight": "x"}]}}, "distill.losses[0].weight", "a number"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, data, key, expected):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, data))
    assert f"{key}:" in str(err.value)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"teacher": {"epochs": 0}}, "teacher.epochs"),
        ({"data": {"source": "internet"}}, "data.source"),
        ({"runtime": {"device": "tpu"}}, "runtime.device"),
        ({"distill": {"losses": []}}, "distill.losses"),
        ({"export": {"atol": 0}}, "export.atol"),
        ({"transfer": {"lr": -1}}, "transfer.lr"),
        ({"teacher": {"weight_decay": -0.1}}, "teacher.weight_decay"),
        ({"distill": {"warm_start": {"fraction": 0, "epochs": 1}}}, "distill.warm_start.fraction"),
        ({"distill": {"warm_start": {"fraction": 0.1, "epochs": 0}}}, "distill.warm_start.epochs"),
        ({"distill": {"warm_start": {"fraction": 0.1}}}, "distill.warm_start.epochs"),
        ({"distill": {"baseline_epochs": 0}}, "distill.baseline_epochs"),
        ({"distill": {"exclude_classes": [-1]}}, "distill.exclude_classes"),
        ({"transfer": {"variant": "freeze"}}, "transfer.variant"),
        ({"runtime": {"processes": 0}}, "runtime.processes"),
        ({"runtime": {"precision": "fp8"}}, "runtime.precision"),
        ({"runtime": {"processes": 4}, "transfer": {"batch_size": 2}}, "transfer.batch_size"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, data, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_plugin_selections_parse_with_kwargs_and_weights(tmp_path):
    over = {
        "augment": {"ops": [{"name": "rotation", "degrees": 10}, "flip"]},
        "distill": {"losses": [{"name": "kd", "weight": 0.9, "temperature": 2}, {"name": "ce"}]},
        "data": {"train_limit": None, "test_limit": 100},
        "teacher": {"lr": 1},
    }
    p = parse_params(yaml.safe_load(write(tmp_path, over).read_text()))
    assert p.augment.ops == (PluginSpec("rotation", {"degrees": 10}), PluginSpec("flip", {}))
    assert p.distill.losses[0] == LossSpec("kd", {"temperature": 2}, 0.9)
    assert p.distill.losses[1].weight == 1.0
    assert p.data.test_limit == 100 and p.data.train_limit is None
    assert p.teacher.lr == 1.0 and isinstance(p.teacher.lr, float)


def test_params_are_frozen():
    p = load_params(REPO / "params.yaml")
    with pytest.raises(AttributeError):
        p.seed = 3  # type: ignore[misc]


def test_flatten_gives_dotted_keys_for_logging():
    flat = flatten(load_params(REPO / "params.yaml"))
    assert flat["teacher.model.name"] == "lenet5" and flat["teacher.model.width"] == 4
    assert flat["distill.losses.0.name"] == "kd"
    assert flat["distill.losses.0.weight"] == load_params(REPO / "params.yaml").distill.losses[0].weight
    assert flat["data.train_limit"] is None


def test_an_unknown_optimizer_is_refused_at_load_naming_the_choices(tmp_path):
    with pytest.raises(ParamsError, match=r"distill\.optimizer: 'adam' is not one of: adamw, sgd"):
        load_params(write(tmp_path, {"distill": {"optimizer": "adam"}}))


def test_choices_are_typed_and_compare_as_their_words():
    from pipeline.params import Optimizer, Precision, Schedule

    p = load_params(REPO / "params.yaml")
    assert p.teacher.optimizer is Optimizer.ADAMW and p.teacher.optimizer == "adamw"
    assert p.teacher.schedule is Schedule.ONECYCLE and p.runtime.precision is Precision.FP32
    assert flatten(p)["teacher.optimizer"] == "adamw" and type(flatten(p)["teacher.optimizer"]) is str


def test_params_written_before_the_runtime_engine_keys_still_load(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in ("processes", "precision", "compile"):
        del raw["runtime"][key]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = load_params(path)
    assert (p.runtime.processes, p.runtime.precision, p.runtime.compile) == (1, "fp32", False)
