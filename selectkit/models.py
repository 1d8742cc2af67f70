"""Model registry: models by name, built from their constructor arguments in params.

Every constructor takes ``in_shape`` (C, H, W) and ``num_classes`` from the store, plus its
own keyword arguments from ``train.model.args``; unknown arguments are rejected by name.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from selectkit.config import ConfigError, ModelConfig

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """Stride-2 3x3 convolutions (BN+ReLU), no pooling, then one linear layer.

    Stride-2 convolutions replace max-pooling, which is slow on CPU in NCHW. With
    channels (32, 64) on 28x28 inputs this is the ~50k-parameter reference CNN of
    BENCHMARK.md (91-92 % on Fashion-MNIST in 10 epochs).
    """

    def __init__(self, in_shape: Tuple[int, int, int], num_classes: int, channels: Sequence[int]):
        super().__init__()
        c, h, w = in_shape
        layers = []
        for cout in channels:
            layers.append(_conv_bn(c, cout, 2))
            c, h, w = cout, (h + 1) // 2, (w + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register("cnn")
def cnn(in_shape, num_classes, channels: Sequence[int] = (32, 64)) -> nn.Module:
    """The Fashion-MNIST target CNN."""
    return ConvNet(in_shape, num_classes, tuple(channels))


@register("proxy_cnn")
def proxy_cnn(in_shape, num_classes, channels: Sequence[int] = (16, 32)) -> nn.Module:
    """A smaller CNN for SVP proxies: the same shape at half the width (about 4x cheaper)."""
    return ConvNet(in_shape, num_classes, tuple(channels))


@register("mlp")
def mlp(in_shape, num_classes, hidden: Sequence[int] = (256,)) -> nn.Module:
    """Multilayer perceptron on flattened pixels; ``hidden: []`` is multinomial logistic regression."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = int(in_shape[0] * in_shape[1] * in_shape[2])
    for hdim in hidden:
        layers += [nn.Linear(d, hdim), nn.ReLU(inplace=True)]
        d = hdim
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2: 20, 32, 44, 56, 110), for GPU runs."""

    def __init__(self, in_shape, num_classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"train.model.args.depth={depth} is not allowed: expected 6n+2 (20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.stem = _conv_bn(in_shape[0], width, 1)
        blocks, c = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                blocks.append(_BasicBlock(c, cout, 2 if (i > 0 and j == 0) else 1))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register("resnet_cifar")
def resnet_cifar(in_shape, num_classes, depth: int = 20, width: int = 16) -> nn.Module:
    return CifarResNet(in_shape, num_classes, depth, width)


def build_model(cfg: ModelConfig, in_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a registered model, rejecting unknown names and arguments with the allowed ones.

    Raises:
        ConfigError: unknown model name or constructor argument.
    """
    if cfg.name not in MODELS:
        raise ConfigError(f"train.model.name={cfg.name!r} is not allowed: expected one of {sorted(MODELS)}")
    fn = MODELS[cfg.name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("in_shape", "num_classes")]
    unknown = sorted(set(cfg.args) - set(allowed))
    if unknown:
        raise ConfigError(f"train.model.args has unknown keys {unknown} for model {cfg.name!r}: "
                          f"allowed are {allowed}")
    try:
        return fn(tuple(in_shape), int(num_classes), **cfg.args)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"train.model.args={dict(cfg.args)!r} are invalid for {cfg.name!r}: {e}") from None


def classifier(model: nn.Module) -> nn.Linear:
    """The model's last linear layer; its input is the penultimate-layer embedding."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: it cannot give embeddings")
    return last


def model_signature(cfg: ModelConfig) -> Dict[str, Any]:
    """What identifies a model's architecture in a checkpoint."""
    return {"name": cfg.name, "args": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.args.items()}}
