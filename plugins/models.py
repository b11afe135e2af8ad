"""Built-in models for small images (grey or RGB; 28x28 grey unless the data says otherwise).

Every model takes raw pixels in [0, 1] and normalises inside (so the exported ONNX does too) and
returns logits. Each model class is its plugin's factory (the entry point names it), with the contract
signature ``(num_classes, in_channels, **keywords with defaults)``; ``torchvision`` is a function, as it
picks and builds the network before wrapping it. The first paragraph of a class docstring is the plugin's
summary in ``distillops plugins list`` and the README. Impossible sizes (a non-positive width, an image
too small for the architecture) fail at build time with a ValueError naming the keyword.

Naming convention shared by the built-ins: ``features`` is the module whose output is the last feature
map (or embedding) before the classifier, and ``fc`` the final Linear layer; the feature losses
(fitnets, at, rkd, pkt) tap ``features`` by default.

| name | architecture | parameters (10 classes, 1 channel) |
|---|---|---|
| ``mlp`` | fully connected, hidden (256, 128) | ~235k |
| ``lenet5`` | LeNet-5-like | ~62k |
| ``mobilenet`` | MobileNetV2-like, inverted residual blocks | ~67k |
| ``resnet8`` | CIFAR-style ResNet, 3 stages x 1 basic block | ~78k |
| ``resnet20`` | CIFAR-style ResNet-20, 3 stages x 3 basic blocks | ~0.27M |
| ``resnet18`` | ResNet-18 with a 3x3 stride-1 stem, no max-pool | ~11.2M |
| ``torchvision`` | any torchvision classification architecture, by name | depends |

The ``torchvision`` wrapper does not follow the naming convention (the architectures name their own
modules); its modules are ``normalize``, ``resize`` and ``net`` (the torchvision model), so feature
taps are e.g. ``net.layer4`` (ResNets, ResNeXts, Wide ResNets), ``net.features`` (MobileNets,
EfficientNets, ConvNeXts, DenseNets, VGGs, AlexNet, SqueezeNets, Swin), ``net.trunk_output``
(RegNets), ``net.layers`` (MNASNets), ``net.conv5`` (ShuffleNets), ``net.inception5b``
(GoogLeNet), ``net.Mixed_7c`` (Inception v3) and ``net.encoder`` (ViTs). Its ``feature_tap``
attribute holds that name where it is known.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plugins._checks import integer, number, positive_integers

# Defaults for a model built outside the pipeline: Fashion-MNIST's training-set statistics and image
# side. The pipeline passes the data's own (``image_size``, ``mean``, ``std``, computed by prepare) to
# every model whose factory takes them, unless params.yaml sets them.
DEFAULT_MEAN = 0.2860
DEFAULT_STD = 0.3530
DEFAULT_IMAGE_SIZE = 28


Stat = float | Sequence[float]  # one value for every channel, or one per channel


def per_channel(name: str, value: Any, channels: int, positive: bool = False) -> list[float]:
    """``value`` (a number, or a list of one number per channel) as one number per channel."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"{name} needs one value or one per channel ({channels}), got {value!r}")
    return [number(name, v, 0, low_open=True) if positive else number(name, v) for v in values]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are a number or one per channel."""

    def __init__(self, mean: Stat, std: Stat, channels: int) -> None:
        super().__init__()
        means = per_channel("mean", mean, channels)
        stds = per_channel("std", std, channels, positive=True)
        self.register_buffer("mean", torch.tensor(means).view(1, channels, 1, 1))
        # 1/std in double precision, then stored as float32
        self.register_buffer("inv_std", torch.tensor([1.0 / v for v in stds]).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): a 3x3 stem, then stages of basic blocks, global pooling.

    ``widths`` holds the channels of each stage (one stage per entry; each stage after the first halves
    the resolution). The plugins resnet8, resnet20 and resnet18 (:func:`_resnet_variant`) fix the number
    of basic blocks per stage.
    """

    def __init__(
        self, num_classes: int, in_channels: int, widths: Sequence[int], blocks: int, mean: Stat, std: Stat
    ) -> None:
        super().__init__()
        widths = positive_integers("widths", widths)
        blocks = integer("blocks", blocks, 1)
        self.normalize = Normalize(mean, std, in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            stage = [
                BasicBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                for j in range(blocks)
            ]
            layers.append(nn.Sequential(*stage))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _round_channels(channels: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` (at least ``divisor``), never more than 10% below the request."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expansion, 3x3 depthwise, 1x1 linear projection,
    with an identity shortcut when the input and output shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNet(nn.Module):
    """MobileNetV2-like student (~67k parameters at width 1, expansion 4; ~97k at expansion 6).

    A small MobileNetV2-like network for 28x28 inputs: a stride-1 stem, inverted residual stages with two
    stride-2 steps (28 -> 14 -> 7), a 1x1 convolution to the embedding width, global pooling. ``width``
    scales every layer's channels (rounded to multiples of 8), ``expansion`` is the inverted residuals'
    expansion factor.
    """

    # (output channels, blocks, stride of the first block, expanded?) per stage
    STAGES = ((16, 1, 1, False), (24, 2, 2, True), (32, 2, 2, True), (48, 2, 1, True))
    STEM, LAST = 16, 128

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        width: float = 1.0,
        expansion: int = 4,
        mean: Stat = DEFAULT_MEAN,
        std: Stat = DEFAULT_STD,
    ) -> None:
        super().__init__()
        width = number("width", width, 0, low_open=True)
        expansion = integer("expansion", expansion, 1)
        self.normalize = Normalize(mean, std, in_channels)
        cin = _round_channels(self.STEM * width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)
        )
        blocks: list[nn.Module] = []
        for channels, n, stride, expanded in self.STAGES:
            cout = _round_channels(channels * width)
            for j in range(n):
                blocks.append(
                    InvertedResidual(cin, cout, stride if j == 0 else 1, expansion if expanded else 1)
                )
                cin = cout
        last = _round_channels(self.LAST * width)
        blocks += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TorchvisionNet(nn.Module):
    """A torchvision classification network behind the built-ins' input handling: ``normalize`` (raw
    [0, 1] pixels in), ``resize`` (bilinear upsampling to ``resize`` x ``resize``, or Identity) and
    ``net`` (the torchvision model, its first convolution adapted to ``in_channels``)."""

    def __init__(self, net: nn.Module, in_channels: int, resize: int | None, mean: Stat, std: Stat) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        self.resize: nn.Module = (
            nn.Upsample(size=(resize, resize), mode="bilinear", align_corners=False)
            if resize is not None
            else nn.Identity()
        )
        self.net = net
        self.feature_tap = _feature_tap(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.resize(self.normalize(x)))
        # GoogLeNet / Inception v3 built with aux_logits=True return a named tuple while training
        return out.logits if hasattr(out, "logits") else out


def _flatten_dense(inputs: int, hidden: Sequence[int]) -> nn.Sequential:
    """Flatten, then one Linear + ReLU per entry of ``hidden`` (its width), starting from ``inputs``
    features; the module indices (1, 3, ...) name the Linear layers in checkpoints."""
    dims = [inputs, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LeNet5(nn.Module):
    """LeNet-5-like student (about 60k parameters at width 1).

    LeNet-5-like (LeCun et al. 1998): two conv+pool stages (a padded 5x5 convolution, a 5x5 convolution,
    each followed by 2x2 max-pooling) and three fully connected layers. ``width`` scales the channels of
    the convolutions (6 and 16 at width 1); ``hidden`` the widths of the fully connected layers before
    ``fc`` (120 and 84 as in LeNet-5; they hold most of the parameters, so a tiny student shrinks these);
    ``image_size`` is the side of the square input images (at least 12, so that the feature map after the
    two stages is at least 1x1).
    """

    MIN_IMAGE_SIZE = 12  # the smallest side whose feature map after the two stages is 1x1

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        width: float = 1.0,
        hidden: Sequence[int] = (120, 84),
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: Stat = DEFAULT_MEAN,
        std: Stat = DEFAULT_STD,
    ) -> None:
        super().__init__()
        width = number("width", width, 0, low_open=True)
        hidden = positive_integers("hidden", hidden, allow_empty=True)
        image_size = integer("image_size", image_size)
        side = ((image_size // 2) - 4) // 2  # after conv(5, pad 2) + pool(2), then conv(5) + pool(2)
        if side < 1:
            raise ValueError(
                f"image_size must be at least {self.MIN_IMAGE_SIZE} for lenet5 (its two conv+pool stages "
                f"need the feature map to stay at least 1x1), got {image_size!r}"
            )
        c1, c2 = max(1, round(6 * width)), max(1, round(16 * width))
        self.normalize = Normalize(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        inputs = c2 * side * side
        self.classifier = _flatten_dense(inputs, hidden)
        self.fc = nn.Linear(hidden[-1] if hidden else inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(self.normalize(x))))


class MLP(nn.Module):
    """Fully connected network on the flattened image.

    A multilayer perceptron: the flattened ``image_size`` x ``image_size`` image, then one Linear + ReLU
    layer per entry of ``hidden`` (its width), then the classifier ``fc``. An empty ``hidden`` leaves a
    linear classifier.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        hidden: Sequence[int] = (256, 128),
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: Stat = DEFAULT_MEAN,
        std: Stat = DEFAULT_STD,
    ) -> None:
        super().__init__()
        hidden = positive_integers("hidden", hidden, allow_empty=True)
        image_size = integer("image_size", image_size, 1)
        self.normalize = Normalize(mean, std, in_channels)
        inputs = in_channels * image_size * image_size
        self.features = _flatten_dense(inputs, hidden)
        self.fc = nn.Linear(hidden[-1] if hidden else inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.normalize(x)))


def _resnet_variant(name: str, blocks: int, default_widths: tuple[int, ...], doc: str) -> type[ResNet]:
    """A ResNet plugin class with ``blocks`` basic blocks per stage: the one place where the variants'
    signature (the keywords and defaults the registry reads) is written."""

    class Variant(ResNet):
        __doc__ = f"{doc}\n\n{inspect.cleandoc(ResNet.__doc__ or '')}"

        def __init__(
            self,
            num_classes: int,
            in_channels: int,
            widths: Sequence[int] = default_widths,
            mean: Stat = DEFAULT_MEAN,
            std: Stat = DEFAULT_STD,
        ) -> None:
            super().__init__(num_classes, in_channels, widths, blocks, mean, std)

    Variant.__name__ = Variant.__qualname__ = name
    Variant.__init__.__qualname__ = f"{name}.__init__"
    return Variant


ResNet8 = _resnet_variant(
    "ResNet8",
    1,
    (16, 32, 64),
    "ResNet-8-like teacher: stem + three stages of one basic block (widths per stage).",
)
ResNet20 = _resnet_variant(
    "ResNet20",
    3,
    (16, 32, 64),
    "ResNet-20 (He et al. 2016, CIFAR variant): stem + three stages of three basic blocks (~0.27M).",
)
ResNet18 = _resnet_variant(
    "ResNet18",
    2,
    (64, 128, 256, 512),
    "ResNet-18 for small images: a 3x3 stride-1 stem, no max-pool, four stages of two basic blocks "
    "(~11.2M).\n\n"
    "Slimmer with e.g. ``widths: [32, 64, 128, 256]`` (~2.8M) or ``[16, 32, 64, 128]`` (~0.7M).",
)


# Keywords the torchvision builders must never get: they would download pretrained weights or clash
# with what this factory sets itself.
_FORBIDDEN_OPTIONS = {
    "weights": "pretrained weights are never loaded (nothing is downloaded at run time)",
    "pretrained": "pretrained weights are never loaded (nothing is downloaded at run time)",
    "weights_backbone": "pretrained weights are never loaded (nothing is downloaded at run time)",
    "pretrained_backbone": "pretrained weights are never loaded (nothing is downloaded at run time)",
    "progress": "nothing is downloaded, so there is no progress to show",
    "num_classes": "the pipeline sets num_classes",
}
# Builder defaults that differ when training from scratch: without the auxiliary heads the model
# returns plain logits (and runs on smaller inputs); init_weights=True silences a FutureWarning.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
# Where the last feature map comes from, per architecture family (attribute of the torchvision model).
_FEATURE_TAPS = (
    "layer4",
    "features",
    "trunk_output",
    "layers",
    "conv5",
    "inception5b",
    "Mixed_7c",
    "encoder",
)
# Input sides tried when an architecture does not run on the data's size, to suggest a ``resize``.
_PROBE_SIZES = (32, 64, 96, 128, 224, 299)


def _feature_tap(net: nn.Module) -> str | None:
    for name in _FEATURE_TAPS:
        if isinstance(getattr(net, name, None), nn.Module):
            return f"net.{name}"
    blocks = getattr(net, "blocks", None)  # MaxViT: a ModuleList of stages
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        return f"net.blocks.{len(blocks) - 1}"
    return None


def _classification_archs() -> list[str]:
    import torchvision.models as tvm

    # module=torchvision.models keeps the classification builders only: detection, segmentation,
    # video, optical flow and quantized models live in submodules
    return sorted(tvm.list_models(module=tvm))


def _adapt_input_channels(net: nn.Module, in_channels: int, arch: str) -> None:
    """Replace the first 3-channel convolution by the same convolution taking ``in_channels``.

    The new kernel keeps the architecture's own initialisation: it takes the first ``in_channels``
    input slices of the freshly initialised RGB kernel (tiled when ``in_channels`` > 3).
    """
    if in_channels == 3:
        return
    name, conv = next(
        ((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
        ("", None),
    )
    if conv is None:
        raise ValueError(
            f"torchvision model '{arch}' has no 3-channel Conv2d to adapt to {in_channels} channels"
        )
    if conv.groups != 1:
        raise ValueError(
            f"torchvision model '{arch}': its first convolution is grouped ({conv.groups} groups)"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, torch.arange(in_channels) % 3])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, new)


def _probe(net: nn.Module, in_channels: int, side: int) -> Exception | None:
    """Run the network once on a blank ``side`` x ``side`` image (eval mode); the error, if it fails."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, side, side))
    except Exception as exc:  # any failure means: does not run at this size
        return exc
    finally:
        net.train(was_training)
    return None


def torchvision(
    num_classes: int,
    in_channels: int,
    arch: str = "resnet18",
    resize: int | None = None,
    options: Mapping[str, Any] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    mean: Stat = DEFAULT_MEAN,
    std: Stat = DEFAULT_STD,
) -> TorchvisionNet:
    """Any torchvision classification architecture by name (``arch``), randomly initialised (not pretrained).

    ``arch`` is any name of ``torchvision.models.list_models(module=torchvision.models)``, e.g. resnet18,
    mobilenet_v3_small, efficientnet_b0, convnext_tiny. The network is always randomly initialised:
    pretrained weights are never loaded (nothing is downloaded).

    ``resize``: upsample (bilinear) inside the model to ``resize`` x ``resize`` first, for architectures
    that need larger inputs than the data's ``image_size`` (which is only used to check, at build time,
    that the network runs). ``options``: extra keyword arguments for the torchvision builder (e.g.
    ``{dropout: 0.1}``, ``{width_mult: 0.5}`` for some). GoogLeNet and Inception v3 are built without
    their auxiliary classifiers unless ``options`` says ``aux_logits: true``.

    Sizes: at 28x28, ResNets, ResNeXts, MobileNets, EfficientNets, RegNets, MNASNets, ShuffleNets,
    SqueezeNets, GoogLeNet and Swin run as they are; AlexNet needs ``resize: 64``, VGGs, DenseNets and
    ConvNeXts ``resize: 32``, Inception v3 ``resize: 96`` (its stem shrinks the image ~30x), ViTs and
    MaxViT ``resize: 224`` (their positional sizes are fixed). An architecture that does not run on the
    input size fails at build time with the smallest working ``resize``.

    ``transfer.head: auto`` (the Linear layers after the last convolution) finds the classifier of
    ResNets, MobileNets, EfficientNets, RegNets, MNASNets, ShuffleNets, DenseNets, VGGs, AlexNet and
    GoogLeNet/Inception; name it (``transfer.head``) for SqueezeNets (``net.classifier``: a 1x1
    convolution), ConvNeXts and MaxViT (``net.classifier``), ViTs (``net.heads``) and Swin (``net.head``),
    whose blocks hold Linear layers after their last convolution.
    """
    import torchvision.models as tvm

    image_size = integer("image_size", image_size, 1)
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a mapping of builder keywords (or null), got {options!r}")
    archs = _classification_archs()
    if arch not in archs:
        close = difflib.get_close_matches(str(arch), archs, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown torchvision classification architecture {arch!r}.{hint} Available: {', '.join(archs)}."
        )
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise ValueError(f"resize must be a positive integer (pixels) or null, got {resize!r}")
    options = dict(options or {})
    bad = [k for k in options if k in _FORBIDDEN_OPTIONS]
    if bad:
        raise ValueError("; ".join(f"options may not set '{k}': {_FORBIDDEN_OPTIONS[k]}" for k in bad))
    options = {**_ARCH_DEFAULTS.get(arch, {}), **options}
    net = tvm.get_model(arch, weights=None, num_classes=num_classes, **options)
    _adapt_input_channels(net, in_channels, arch)
    side = resize if resize is not None else image_size
    error = _probe(net, in_channels, side)
    if error is not None:
        works = next((s for s in _PROBE_SIZES if s > side and _probe(net, in_channels, s) is None), None)
        advice = (
            f"set resize: {works} (the smallest of {', '.join(map(str, _PROBE_SIZES))} that works) to "
            f"upsample inside the model"
            if works
            else f"no resize among {', '.join(map(str, _PROBE_SIZES))} makes it run either; check its options"
        )
        detail = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"torchvision model '{arch}' does not run on {side}x{side} inputs "
            f"({type(error).__name__}: {detail}); {advice}."
        )
    return TorchvisionNet(net, in_channels, resize, mean, std)
