"""The example package's own tests; distillops' contract tests also run over it once installed."""

import torch
from distillops_example_plugins import gaussian_noise, logit_huber

from pipeline.plugin_checks import check_plugin
from pipeline.protocols import LossInputs
from pipeline.registry import find


def test_discovered_through_entry_points_with_distribution():
    assert find("augmenters")["gaussian_noise"].provenance == "distillops-example-plugins==0.1.0"
    assert find("losses")["logit_huber"].provenance == "distillops-example-plugins==0.1.0"


def test_pass_the_distillops_contract():
    assert check_plugin(find("augmenters")["gaussian_noise"]) == []
    assert check_plugin(find("losses")["logit_huber"]) == []


def test_noise_is_seeded_and_bounded():
    x, y = torch.rand(4, 1, 28, 28), torch.eye(10)[:4]
    a = gaussian_noise(std=0.5)(x, y, torch.Generator().manual_seed(1))[0]
    b = gaussian_noise(std=0.5)(x, y, torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)


def test_huber_is_zero_when_student_equals_teacher():
    t = torch.randn(3, 10)
    inputs = LossInputs(t, t, torch.eye(10)[:3], torch.arange(3))
    assert logit_huber()(inputs).item() == 0.0
