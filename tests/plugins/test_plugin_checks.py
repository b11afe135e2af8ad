"""Contract tests over every plugin installed in the environment: a third party's plugin is tested
here the moment its distribution is installed."""

from __future__ import annotations

import pytest

from pipeline import plugin_checks, registry


def discovered(group: str) -> list[pytest.param]:
    return [
        pytest.param(info, id=f"{name}[{info.provenance}]") for name, info in registry.find(group).items()
    ]


@pytest.mark.parametrize("info", discovered("augmenters"))
def test_augmenter_contract(info):
    assert plugin_checks.check_plugin(info) == []


@pytest.mark.parametrize("info", discovered("losses"))
def test_loss_contract(info):
    assert plugin_checks.check_plugin(info) == []


@pytest.mark.parametrize("info", discovered("models"))
def test_model_contract_and_onnx_parity(info):
    assert plugin_checks.check_plugin(info) == []


def test_contract_catches_a_bad_augmenter(fake_dist):
    fake_dist(
        "acme-bad",
        "0.1",
        {"distillops.augmenters": {"noisy": "acme_bad:noisy"}},
        {
            "acme_bad.py": """
        import torch
        def noisy():
            def aug(x, y, g):
                return x + torch.rand(x.shape), y   # global RNG, not g; leaves [0, 1]
            return aug
    """
        },
    )
    problems = plugin_checks.check_plugin(registry.find("augmenters")["noisy"])
    assert any("same generator seed" in p for p in problems)
    assert any("[0, 1]" in p for p in problems)


def test_contract_catches_a_non_scalar_loss(fake_dist):
    fake_dist(
        "acme-vec",
        "0.1",
        {"distillops.losses": {"vec": "acme_vec:vec"}},
        {
            "acme_vec.py": """
        def vec():
            def loss(inputs):
                return inputs.student_logits.sum(1)
            loss.requires_teacher = False
            return loss
    """
        },
    )
    assert "scalar" in plugin_checks.check_plugin(registry.find("losses")["vec"])[0]
