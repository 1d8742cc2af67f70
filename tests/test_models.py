import pytest
import torch

from selectkit.config import ConfigError, ModelConfig
from selectkit.models import MODELS, build_model
from selectkit.tasks import ImageSpec


def spec(*shape):
    return ImageSpec(tuple(shape))


TEXT_MODELS = {"fasttext", "transformer", "textcnn"}


@pytest.mark.parametrize("name", sorted(set(MODELS) - TEXT_MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_maps_images_to_logits(name, shape):
    m = build_model(ModelConfig(name=name), ImageSpec(shape), 10)
    out = m(torch.randn(4, *shape))
    assert out.shape == (4, 10)


@pytest.mark.parametrize("name", sorted(TEXT_MODELS))
def test_every_text_model_maps_padded_tokens_to_logits(name):
    from selectkit.tasks.text import TextClassification, TextSpec

    m = build_model(ModelConfig(name=name), TextSpec(vocab_size=50, max_length=12), 10)
    tokens, mask = TextClassification.dummy_inputs({"vocab_size": 50, "max_length": 12, "batch_length": 9}, 4,
                                                   torch.device("cpu"), torch.Generator().manual_seed(0))
    out = m(tokens, mask)
    assert out.shape == (4, 10)
    # padding changes nothing: the same rows with three more padding columns give the same logits
    wide = torch.cat([tokens, torch.zeros(4, 3, dtype=tokens.dtype)], 1)
    torch.testing.assert_close(m.eval()(wide, wide != 0), m(tokens, mask))


def test_reference_cnn_size():
    m = build_model(ModelConfig("cnn", {"channels": [32, 64]}), spec(1, 28, 28), 10)
    n = sum(p.numel() for p in m.parameters())
    assert 45_000 < n < 55_000  # BENCHMARK.md's ~50k-parameter reference CNN


def test_proxy_is_smaller_than_target():
    size = lambda name: sum(p.numel() for p in build_model(ModelConfig(name), spec(1, 28, 28), 10).parameters())
    assert size("proxy_cnn") < size("cnn") / 2


def test_unknown_model_and_args():
    with pytest.raises(ConfigError, match=r"model.name='vit'.*registered model.*package.module:factory"):
        build_model(ModelConfig("vit"), spec(1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"unknown keys \['width'\].*allowed are \['channels'\]"):
        build_model(ModelConfig("cnn", {"width": 3}), spec(1, 28, 28), 10)
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model(ModelConfig("resnet_cifar", {"depth": 21}), spec(3, 32, 32), 10)


def test_mlp_without_hidden_is_linear():
    m = build_model(ModelConfig("mlp", {"hidden": []}), spec(1, 8, 8), 10)
    assert sum(isinstance(l, torch.nn.Linear) for l in m.modules()) == 1


# ------------------------------------------------------------------ models by import path
FACTORIES = """
import torch


def tiny(spec, num_classes, hidden=8):
    c, h, w = spec.shape
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))


def wrong_width(spec, num_classes):
    c, h, w = spec.shape
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, num_classes + 1))


def not_a_module(spec, num_classes):
    return "a model"


class Holder:
    @staticmethod
    def nested(spec, num_classes):
        return tiny(spec, num_classes, 4)
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORIES)
    (tmp_path / "broken_models.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_model_by_import_path_trains(user_package, digits_store):
    from conftest import tiny_train_cfg
    from selectkit.train import Trainer

    cfg = tiny_train_cfg(epochs=1, model={"name": "my_models:tiny", "args": {"hidden": 16}})
    r = Trainer(digits_store, cfg).fit()
    assert r.metrics["final_test_error"] < 0.5 and r.metrics["model"]["name"] == "my_models:tiny"
    m = build_model(ModelConfig("my_models:Holder.nested"), spec(1, 8, 8), 3)
    assert m[-1].out_features == 3


@pytest.mark.parametrize("name, args, match", [
    ("no_such_module_xyz:f", {}, r"cannot import module 'no_such_module_xyz' \(ModuleNotFoundError.*PYTHONPATH"),
    ("broken_models:f", {}, r"cannot import module 'broken_models' \(ModuleNotFoundError: No module named "
                            r"'not_a_real_dependency_xyz'"),
    ("my_models:missing", {}, r"module 'my_models' has no attribute 'missing'; it defines \[.*'tiny'"),
    ("my_models:", {}, r"needs both parts"),
    ("my_models:not_a_module", {}, r"returned a str, not a torch.nn.Module"),
    ("my_models:tiny", {"depth": 3}, r"unknown keys \['depth'\] for model 'my_models:tiny': allowed are \['hidden'\]"),
])
def test_import_path_errors(user_package, name, args, match):
    with pytest.raises(ConfigError, match=match):
        build_model(ModelConfig(name, args), spec(1, 8, 8), 3)


def test_wrong_number_of_outputs_fails_before_training(user_package, digits_store):
    from selectkit.models import make_model
    from selectkit.tasks import task_for

    with pytest.raises(ConfigError, match=r"outputs of shape \[2, 11\].*10 classes.*num_classes"):
        make_model(ModelConfig("my_models:wrong_width"), task_for(digits_store))
