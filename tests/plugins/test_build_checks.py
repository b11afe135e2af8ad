"""The built-in plugins are classes registered directly as entry points, and they reject impossible
values when they are built (not at the first batch), with a message naming the keyword and the value.

Every case builds the plugin for real through its installed entry point."""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

from pipeline import registry

MODEL_ARGS = {"num_classes": 10, "in_channels": 1}


def build(group: str, name: str, **kwargs):
    factory = registry.get(group, name).load()
    return factory(**MODEL_ARGS, **kwargs) if group == "models" else factory(**kwargs)


def builtins(group: str) -> list[str]:
    return [name for name, info in registry.find(group).items() if info.distribution == "distillops"]


def assert_rejected(group: str, name: str, kwargs: dict, keyword: str, allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        build(group, name, **kwargs)
    message = str(err.value)
    assert re.search(rf"\b{keyword} must\b", message), message
    assert allowed in message, message
    assert f"got {kwargs[keyword]!r}" in message, message


@pytest.mark.parametrize("group", ["augmenters", "losses", "models"])
def test_builtin_entry_points_name_classes_whose_keywords_all_have_defaults(group):
    for name in builtins(group):
        factory = registry.get(group, name).load()
        if name == "torchvision":  # picks and builds a torchvision network: a function, not a wrapper
            assert inspect.isfunction(factory)
        else:
            assert inspect.isclass(factory), f"{group} plugin '{name}' should name its class"
        params = list(inspect.signature(factory).parameters.values())
        if group == "models":
            assert [p.name for p in params[:2]] == ["num_classes", "in_channels"], name
            params = params[2:]
        missing = [p.name for p in params if p.default is p.empty]
        assert not missing, f"{group} plugin '{name}' has keywords without a default: {missing}"
        summary = (inspect.getdoc(factory) or "").split("\n\n")[0]
        assert summary and " ".join(summary.split()).endswith("."), f"{group} '{name}': {summary!r}"


# --- models ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "keyword", "allowed"),
    [
        ("lenet5", {"width": -1}, "width", "> 0"),
        ("lenet5", {"width": 0}, "width", "> 0"),
        ("lenet5", {"width": math.nan}, "width", "> 0"),
        ("lenet5", {"image_size": 11}, "image_size", "at least 12"),
        ("lenet5", {"image_size": 0}, "image_size", "at least 12"),
        ("lenet5", {"image_size": 27.5}, "image_size", "integer"),
        ("lenet5", {"std": 0}, "std", "> 0"),
        ("resnet8", {"widths": [0, 0, 0]}, "widths", "non-empty list of positive integers"),
        ("resnet8", {"widths": []}, "widths", "non-empty list of positive integers"),
        ("resnet8", {"widths": 16}, "widths", "non-empty list of positive integers"),
        ("resnet20", {"widths": [16, -32, 64]}, "widths", "non-empty list of positive integers"),
        ("resnet18", {"widths": [64, 128, 256, 0]}, "widths", "non-empty list of positive integers"),
        ("resnet18", {"widths": [64, 128.5]}, "widths", "non-empty list of positive integers"),
        ("resnet8", {"mean": math.inf}, "mean", "finite number"),
        ("mlp", {"hidden": [256, 0]}, "hidden", "list of positive integers"),
        ("mlp", {"hidden": [-128]}, "hidden", "list of positive integers"),
        ("mlp", {"image_size": 0}, "image_size", ">= 1"),
        ("mobilenet", {"width": 0}, "width", "> 0"),
        ("mobilenet", {"width": -0.5}, "width", "> 0"),
        ("mobilenet", {"expansion": 0}, "expansion", ">= 1"),
        ("mobilenet", {"expansion": 2.5}, "expansion", "integer"),
        ("torchvision", {"image_size": 0}, "image_size", ">= 1"),
        ("torchvision", {"options": ["dropout", 0.1]}, "options", "mapping"),
    ],
)
def test_models_reject_impossible_sizes_at_build(name, kwargs, keyword, allowed):
    assert_rejected("models", name, kwargs, keyword, allowed)


def test_model_size_limits_are_exact():
    """The smallest sizes that work still build and run: the checks refuse only what cannot work."""
    lenet = build("models", "lenet5", image_size=12, width=0.1).eval()
    with torch.no_grad():
        assert lenet(torch.rand(2, 1, 12, 12)).shape == (2, 10)
        assert build("models", "mlp", hidden=[], image_size=1).eval()(torch.rand(2, 1, 1, 1)).shape == (2, 10)
        assert build("models", "resnet8", widths=[4]).eval()(torch.rand(2, 1, 5, 5)).shape == (2, 10)
        assert build("models", "mobilenet", expansion=1, width=0.1).eval()(torch.rand(2, 1, 8, 8)).shape == (
            2,
            10,
        )
    assert build("models", "resnet20", widths=(8.0, 16, 32)).features[0][0].conv1.out_channels == 8


# --- augmenters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "keyword", "allowed"),
    [
        ("flip", {"p": 2}, "p", "in [0, 1]"),
        ("flip", {"p": math.nan}, "p", "in [0, 1]"),
        ("flip", {"p": True}, "p", "in [0, 1]"),
        ("flip", {"p": "0.5"}, "p", "in [0, 1]"),
        ("crop", {"padding": -1}, "padding", ">= 0"),
        ("crop", {"padding": 1.5}, "padding", "integer"),
        ("rotation", {"degrees": -5}, "degrees", ">= 0"),
        ("rotation", {"degrees": math.inf}, "degrees", ">= 0"),
        ("noise", {"std": -0.1}, "std", ">= 0"),
        ("noise", {"std": math.nan}, "std", ">= 0"),
        ("salt_pepper", {"amount": 1.5}, "amount", "in [0, 1]"),
        ("erasing", {"max_area": 1.5}, "max_area", "in [0, 1]"),
        ("erasing", {"min_area": 0.5, "max_area": 0.2}, "min_area", "<= max_area"),
        ("erasing", {"value": 2}, "value", "in [0, 1]"),
        ("mixup", {"alpha": 0}, "alpha", "> 0"),
        ("cutmix", {"alpha": -1}, "alpha", "> 0"),
        ("affine", {"degrees": -1}, "degrees", ">= 0"),
        ("affine", {"scale": (0.9, math.inf)}, "scale", "pair (min, max)"),
        ("color_jitter", {"contrast": math.nan}, "contrast", ">= 0"),
        ("color_jitter", {"hue": 0.6}, "hue", "in [0, 0.5]"),
        ("resized_crop", {"ratio": (0, 1)}, "ratio", "pair (min, max)"),
        ("randaugment", {"num_ops": 1.5}, "num_ops", "integer >= 0"),
        ("randaugment", {"magnitude": 31}, "magnitude", "in [0, 30]"),
        ("trivialaugment", {"ops": 5}, "ops", "non-empty list"),
    ],
)
def test_augmenters_reject_bad_values_at_build(name, kwargs, keyword, allowed):
    assert_rejected("augmenters", name, kwargs, keyword, allowed)


# --- losses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "keyword", "allowed"),
    [
        ("ce", {"label_smoothing": 1.0}, "label_smoothing", "in [0, 1)"),
        ("kd", {"temperature": 0}, "temperature", "> 0"),
        ("kd", {"temperature": -1}, "temperature", "> 0"),
        ("kd", {"temperature": math.inf}, "temperature", "> 0"),
        ("pseudo_label", {"threshold": 1}, "threshold", "in [0, 1)"),
        ("dkd", {"alpha": -1}, "alpha", ">= 0"),
        ("dkd", {"temperature": 0}, "temperature", "> 0"),
        ("dist", {"gamma": -0.5}, "gamma", ">= 0"),
        ("dist", {"temperature": math.nan}, "temperature", "> 0"),
        ("fitnets", {"kernel_size": 2}, "kernel_size", "positive odd"),
        ("fitnets", {"kernel_size": 0}, "kernel_size", "integer >= 1"),
        ("fitnets", {"kernel_size": 1.5}, "kernel_size", "integer >= 1"),
        ("fitnets", {"student_layer": ""}, "student_layer", "module name"),
        ("at", {"p": 0}, "p", "> 0"),
        ("at", {"beta": 0}, "beta", "> 0"),
        ("rkd", {"distance_weight": -1}, "distance_weight", ">= 0"),
        ("pkt", {"eps": 0}, "eps", "> 0"),
        ("pkt", {"teacher_layer": None}, "teacher_layer", "module name"),
    ],
)
def test_losses_reject_bad_values_at_build(name, kwargs, keyword, allowed):
    assert_rejected("losses", name, kwargs, keyword, allowed)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dkd", {"alpha": 0, "beta": 0}),
        ("dist", {"beta": 0, "gamma": 0}),
        ("rkd", {"distance_weight": 0, "angle_weight": 0}),
    ],
)
def test_losses_whose_terms_are_all_switched_off_are_rejected(name, kwargs):
    with pytest.raises(ValueError, match=" and ".join(kwargs) + " must not all be 0"):
        build("losses", name, **kwargs)
    first = next(iter(kwargs))
    assert callable(build("losses", name, **{first: 0}))  # one term off is fine
