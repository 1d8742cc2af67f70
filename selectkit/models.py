"""Models: a registry of built-in ones by name, and any factory by import path.

``train.model.name`` is a registered name (images: ``cnn``, ``proxy_cnn``, ``mlp``,
``resnet_cifar``; text, selectkit/text_models.py: ``fasttext``, ``transformer``, ``textcnn``)
or ``package.module:factory``. Every factory is called as ``factory(spec, num_classes,
**train.model.args)``: ``spec`` is the task's example spec (an ``ImageSpec`` with ``shape``
(C, H, W) for images, a ``TextSpec`` with ``vocab_size`` and ``max_length`` for text, whose
models are called as ``model(tokens, mask)``), ``num_classes`` comes from the store. Unknown arguments are rejected
by name; a factory that fails to import, is missing, or returns something other than an
``nn.Module`` fails naming the path and the fix; ``check_outputs`` runs two dummy examples
through a new model to catch a wrong number of outputs before training starts.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict, Sequence

import torch
from torch import nn

from selectkit.validation import ConfigError

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator adding a factory ``fn(spec, num_classes, **args)`` to the registry as ``name``."""

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

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int]):
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
def cnn(spec, num_classes, channels: Sequence[int] = (32, 64)) -> nn.Module:
    """The Fashion-MNIST target CNN."""
    return ConvNet(spec.shape, num_classes, tuple(channels))


@register("proxy_cnn")
def proxy_cnn(spec, num_classes, channels: Sequence[int] = (16, 32)) -> nn.Module:
    """A smaller CNN for SVP proxies: the same shape at half the width (about 4x cheaper)."""
    return ConvNet(spec.shape, num_classes, tuple(channels))


@register("mlp")
def mlp(spec, num_classes, hidden: Sequence[int] = (256,)) -> nn.Module:
    """Multilayer perceptron on flattened pixels; ``hidden: []`` is multinomial logistic regression."""
    layers: list[nn.Module] = [nn.Flatten()]
    c, h, w = spec.shape
    d = int(c * h * w)
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
def resnet_cifar(spec, num_classes, depth: int = 20, width: int = 16) -> nn.Module:
    return CifarResNet(spec.shape, num_classes, depth, width)


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The factory for ``train.model.name``: a registered name or ``package.module:factory``.

    Raises:
        ConfigError: not registered and not an import path; the module does not import; the
            attribute is missing or not callable.
    """
    if name in MODELS:
        return MODELS[name]
    key = f"train.model.name={name!r}"
    if ":" not in name:
        raise ConfigError(f"{key} is not allowed: expected a registered model {sorted(MODELS)} or an import "
                          f"path 'package.module:factory' to your own factory(spec, num_classes, **args)")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: an import path needs both parts, 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any failure while importing user code, not only ModuleNotFoundError
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({type(e).__name__}: {e}). Make it "
                          f"importable: install its package (pip install -e .), or run from the folder "
                          f"holding it / add that folder to PYTHONPATH") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}; it defines "
                              f"{public[:20]}. Fix the name after ':'") from None
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"{key}: {attr!r} in {module_name!r} is a {type(fn).__name__}, not a callable factory")
    return fn


def build_model(cfg, spec, num_classes: int) -> nn.Module:
    """Build ``cfg`` (a ModelConfig), rejecting unknown names and arguments with the allowed ones.

    Args:
        cfg: ``name`` (registered or ``package.module:factory``) and ``args``.
        spec: the task's example spec.
        num_classes: the store's number of classes.

    Raises:
        ConfigError: unknown model or argument, a failing import, a factory that rejects its
            arguments or does not return an ``nn.Module``.
    """
    fn = resolve_factory(cfg.name)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        params = {}
    if params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = list(params)[2:]  # after (spec, num_classes)
        unknown = sorted(set(cfg.args) - set(allowed))
        if unknown:
            raise ConfigError(f"train.model.args has unknown keys {unknown} for model {cfg.name!r}: "
                              f"allowed are {allowed}")
    try:
        model = fn(spec, int(num_classes), **cfg.args)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        if "is a text model" in str(e):
            raise ConfigError(f"train.model.name={cfg.name!r}: {e}") from None
        raise ConfigError(f"train.model.args={dict(cfg.args)!r} are invalid for {cfg.name!r}: {e}") from None
    except AttributeError as e:  # e.g. an image model handed a TextSpec
        raise ConfigError(f"model {cfg.name!r} cannot be built for this store's examples ({type(spec).__name__}: "
                          f"{e}): pick a model for that task (images: cnn, proxy_cnn, mlp, resnet_cifar; text: "
                          f"fasttext, transformer, textcnn)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"train.model.name={cfg.name!r}: the factory returned a {type(model).__name__}, not a "
                          f"torch.nn.Module: return the model instance")
    return model


@torch.no_grad()
def check_outputs(model: nn.Module, task, name: str) -> None:
    """Run two dummy examples through ``model`` (eval mode, private generator: the global RNG
    and BatchNorm statistics stay untouched) and check it gives ``[2, num_classes]`` outputs.

    Raises:
        ConfigError: the forward fails, or the output shape is not ``[2, task.num_classes]``.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
        x = task.dummy_inputs(task.spec_dict(), 2, device, generator=torch.Generator(device).manual_seed(0))
        try:
            out = task.forward(model, x)
        except Exception as e:
            raise ConfigError(f"model {name!r} fails on inputs of the task's spec {task.spec_dict()} "
                              f"({type(e).__name__}: {e}): build it for that input") from None
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2, task.num_classes):
        raise ConfigError(f"model {name!r} gives outputs of shape {list(shape)} for 2 examples, but the store has "
                          f"{task.num_classes} classes: expected [2, {task.num_classes}]; make its last layer output "
                          f"num_classes (the factory receives it)")


def make_model(cfg, task) -> nn.Module:
    """``build_model`` for ``task``'s spec and classes, then ``check_outputs``."""
    model = build_model(cfg, task.spec, task.num_classes)
    check_outputs(model, task, cfg.name)
    return model


def classifier(model: nn.Module) -> nn.Linear:
    """The model's last linear layer; its input is the penultimate-layer embedding."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: it cannot give embeddings")
    return last


def model_signature(cfg) -> Dict[str, Any]:
    """What identifies a model's architecture in a checkpoint."""
    return {"name": cfg.name, "args": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.args.items()}}


from selectkit import text_models  # noqa: E402,F401  (registers fasttext, transformer, textcnn)
