import pytest
import torch

from selectkit.config import ConfigError, ModelConfig
from selectkit.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_maps_images_to_logits(name, shape):
    m = build_model(ModelConfig(name=name), shape, 10)
    out = m(torch.randn(4, *shape))
    assert out.shape == (4, 10)


def test_reference_cnn_size():
    m = build_model(ModelConfig("cnn", {"channels": [32, 64]}), (1, 28, 28), 10)
    n = sum(p.numel() for p in m.parameters())
    assert 45_000 < n < 55_000  # BENCHMARK.md's ~50k-parameter reference CNN


def test_proxy_is_smaller_than_target():
    size = lambda name: sum(p.numel() for p in build_model(ModelConfig(name), (1, 28, 28), 10).parameters())
    assert size("proxy_cnn") < size("cnn") / 2


def test_unknown_model_and_args():
    with pytest.raises(ConfigError, match=r"model.name='vit'.*one of"):
        build_model(ModelConfig("vit"), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"unknown keys \['width'\].*allowed are \['channels'\]"):
        build_model(ModelConfig("cnn", {"width": 3}), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model(ModelConfig("resnet_cifar", {"depth": 21}), (3, 32, 32), 10)


def test_mlp_without_hidden_is_linear():
    m = build_model(ModelConfig("mlp", {"hidden": []}), (1, 8, 8), 10)
    assert sum(isinstance(l, torch.nn.Linear) for l in m.modules()) == 1
