"""The built-in model factories beyond the generic contract (sizes, naming, the torchvision wrapper)."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from pipeline.errors import PluginError
from pipeline.params import PluginSpec
from pipeline.selection import create
from pipeline.transfer import find_head


def model(name: str, num_classes: int = 10, in_channels: int = 1, **kwargs) -> nn.Module:
    return create("models", PluginSpec(name, kwargs), num_classes=num_classes, in_channels=in_channels)[0]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def logits(m: nn.Module, b: int = 2, in_channels: int = 1, side: int = 28) -> torch.Tensor:
    with torch.no_grad():
        return m.eval()(torch.rand(b, in_channels, side, side))


@pytest.mark.parametrize(
    ("name", "kwargs", "low", "high"),
    [
        ("resnet20", {}, 260_000, 285_000),
        ("resnet18", {}, 10_500_000, 11_500_000),
        ("resnet18", {"widths": [16, 32, 64, 128]}, 600_000, 800_000),
        ("mobilenet", {}, 20_000, 100_000),
        ("mobilenet", {"expansion": 6}, 20_000, 100_000),
        ("mobilenet", {"width": 0.5}, 15_000, 40_000),
    ],
)
def test_parameter_counts_are_in_the_advertised_range(name, kwargs, low, high):
    assert low < n_params(model(name, **kwargs)) < high


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18", "mobilenet", "lenet5", "mlp"])
def test_builtins_name_features_and_fc(name):
    m = model(name, num_classes=7)
    modules = dict(m.named_modules())
    assert isinstance(modules.get("fc"), nn.Linear) and modules["fc"].out_features == 7
    assert "features" in modules
    seen = {}
    handle = modules["features"].register_forward_hook(lambda _m, _i, out: seen.setdefault("f", out))
    out = logits(m)
    handle.remove()
    assert out.shape == (2, 7)
    assert seen["f"].shape[0] == 2  # a per-sample feature map or embedding


def test_convolutional_builtins_end_features_with_a_feature_map():
    for name in ("resnet20", "mobilenet"):
        m = model(name)
        x = m.stem(m.normalize(torch.rand(2, 1, 28, 28)))
        fmap = m.features.eval()(x)
        assert fmap.dim() == 4 and fmap.shape[1] == m.fc.in_features and fmap.shape[-1] == 7


def test_mobilenet_blocks_are_inverted_residuals_with_shortcuts():
    m = model("mobilenet")
    blocks = [b for b in m.modules() if type(b).__name__ == "InvertedResidual"]
    assert len(blocks) == 7 and any(b.residual for b in blocks) and not all(b.residual for b in blocks)
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert n_params(model("mobilenet", width=2.0)) > 2 * n_params(m)
    assert logits(model("mobilenet", in_channels=3), in_channels=3).shape == (2, 10)


def test_builtin_factories_reject_unknown_keywords():
    with pytest.raises(PluginError, match="accepts: widths, mean, std"):
        model("resnet20", blocks=5)
    with pytest.raises(PluginError, match="does not take"):
        model("torchvision", pretrained=True)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_torchvision_builds_with_the_requested_input_channels(in_channels):
    m = model("torchvision", num_classes=5, in_channels=in_channels)
    assert isinstance(m.net.conv1, nn.Conv2d) and m.net.conv1.in_channels == in_channels
    assert (m.net.conv1.kernel_size, m.net.conv1.stride, m.net.conv1.out_channels) == ((7, 7), (2, 2), 64)
    assert logits(m, b=3, in_channels=in_channels).shape == (3, 5)
    m.train()
    assert m(torch.rand(2, in_channels, 28, 28)).shape == (2, 5)


def test_torchvision_other_archs_and_options():
    small = model("torchvision", arch="mobilenet_v3_small", options={"dropout": 0.5})
    assert small.net.classifier[2].p == 0.5
    assert small.net.features[0][0].in_channels == 1
    assert logits(small).shape == (2, 10)
    google = model("torchvision", arch="googlenet").train()  # no auxiliary heads: plain logits
    assert isinstance(google(torch.rand(2, 1, 28, 28)), torch.Tensor)


def test_torchvision_unknown_arch_lists_the_available_names():
    with pytest.raises(PluginError) as err:
        model("torchvision", arch="resnet81")
    message = str(err.value)
    assert "Did you mean 'resnet18'" in message
    assert "mobilenet_v3_small" in message and "efficientnet_b0" in message
    # classification only: detection / segmentation / video builders are not offered
    for other in ("fasterrcnn_resnet50_fpn", "deeplabv3_resnet50", "r3d_18"):
        with pytest.raises(PluginError, match="unknown torchvision classification architecture"):
            model("torchvision", arch=other)
    assert "fasterrcnn" not in message and "quantized" not in message


def test_torchvision_never_loads_pretrained_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    torch.manual_seed(0)
    a = model("torchvision")
    torch.manual_seed(1)
    b = model("torchvision")
    torch.manual_seed(0)
    a_again = model("torchvision")
    # random initialisation, seeded by the caller: no fixed (pretrained) weights anywhere
    assert not torch.equal(a.net.layer1[0].conv1.weight, b.net.layer1[0].conv1.weight)
    assert torch.equal(a.net.layer1[0].conv1.weight, a_again.net.layer1[0].conv1.weight)
    for key in ("weights", "pretrained", "weights_backbone"):
        with pytest.raises(PluginError, match="never loaded"):
            model("torchvision", options={key: "DEFAULT"})


def test_torchvision_resize_upsamples_inside_the_model():
    m = model("torchvision", arch="squeezenet1_1", resize=64)
    seen = []
    m.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    assert logits(m).shape == (2, 10)
    assert seen == [(2, 1, 64, 64)]
    plain = model("torchvision", arch="squeezenet1_1")
    assert isinstance(plain.resize, nn.Identity)


def test_torchvision_arch_too_big_for_28x28_suggests_resize():
    with pytest.raises(PluginError, match=r"does not run on 28x28 inputs.*resize: 32"):
        model("torchvision", arch="densenet121")
    assert logits(model("torchvision", arch="densenet121", resize=32)).shape == (2, 10)
    with pytest.raises(PluginError, match="positive integer"):
        model("torchvision", resize=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "head"),
    [
        ("resnet20", {}, ("fc",)),
        ("mobilenet", {}, ("fc",)),
        ("lenet5", {}, ("classifier.1", "classifier.3", "fc")),
        ("torchvision", {}, ("net.fc",)),
        ("torchvision", {"arch": "mobilenet_v3_small"}, ("net.classifier.0", "net.classifier.3")),
        ("torchvision", {"arch": "efficientnet_b0"}, ("net.classifier.1",)),
    ],
)
def test_find_head_auto_finds_the_classifier(name, kwargs, head):
    assert find_head(model(name, **kwargs)) == head


@pytest.mark.parametrize(
    ("arch", "tap"), [("resnet18", "net.layer4"), ("mobilenet_v3_small", "net.features")]
)
def test_torchvision_feature_tap_names_a_module(arch, tap):
    m = model("torchvision", arch=arch)
    assert m.feature_tap == tap and tap in dict(m.named_modules())
