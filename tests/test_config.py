import pytest

from selectkit.config import (ConfigError, DataConfig, TrainConfig, from_dict, load_params, load_train_config, train_config,
                              load_section)


def test_defaults_are_valid():
    cfg = from_dict(TrainConfig, {}, "train")
    assert cfg.label == "traditional" and cfg.lr == 0.1


def test_unknown_key_names_the_key_and_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*Allowed keys.*epochs"):
        from_dict(TrainConfig, {"epoch": 3}, "train")


def test_unknown_nested_key():
    with pytest.raises(ConfigError, match=r"train.input.batchsize"):
        from_dict(TrainConfig, {"input": {"batchsize": 1}}, "train")


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.lr.*'fast'"):
        from_dict(TrainConfig, {"lr": "fast"}, "train")


@pytest.mark.parametrize("values, match", [
    ({"lr": -1.0}, r"train.lr=-1.0 is not allowed: expected > 0"),
    ({"optimizer": "lbfgs"}, r"train.optimizer='lbfgs'.*one of \['sgd', 'adam'\]"),
    ({"milestones": [0.5, 1.5]}, r"train.milestones"),
    ({"epochs": 0}, r"train.epochs=0.*>= 1"),
    ({"methods": {"magic": {}}}, r"not a registered method: registered are \['autoassist', 'infobatch', 'rholoss', 'sb', 'svp'\]"),
    ({"methods": {"sb": {"beta": 0}}}, r"train.methods.sb.beta=0"),
    ({"methods": {"sb": {"max_lambda": 0.5}}}, r"train.methods.sb.max_lambda.*of \['autoassist'\]: move it to "
                                                r"train.methods.autoassist.max_lambda"),
    ({"methods": {"sb": {"bta": 2}}}, r"unknown key 'train.methods.sb.bta'.*beta"),
    ({"methods": {"svp": {}}}, r"svp runs as DVC stages.*input.subset"),
    ({"methods": ["sb"]}, r"train.methods must map method names to their params"),
    ({"input": {"augment": "mixup"}}, r"input.augment='mixup'"),
    ({"device": "tpu"}, r"train.device='tpu'"),
])
def test_out_of_range(values, match):
    with pytest.raises(ConfigError, match=match):
        train_config(values, "train")


@pytest.mark.parametrize("key", ["policy", "sb", "autoassist"])
def test_keys_of_older_params_name_their_new_place(key):
    from selectkit.config import train_config

    with pytest.raises(ConfigError, match=rf"train.{key} is no longer a params key: .*train.methods"):
        train_config({key: "sb" if key == "policy" else {}})


def test_stack_order_and_label():
    cfg = from_dict(TrainConfig, {"methods": {"sb": {}, "autoassist": {"worker": "inline"}}}, "train")
    assert list(cfg.methods) == ["autoassist", "sb"] and cfg.label == "autoassist+sb"  # ids slot before batches
    assert [m.name for m, _ in cfg.stack] == ["autoassist", "sb"]
    assert cfg.methods["sb"].beta == 2.0  # each method's own defaults
    assert from_dict(TrainConfig, {"methods": {"sb": None}}, "train").methods["sb"].window == 1024


def test_two_methods_claiming_an_exclusive_slot():
    import dataclasses

    from selectkit.methods import METHODS, Method, register, unregister

    @dataclasses.dataclass
    class Cfg:
        k: int = 1

    register(Method("other_filter", "batches", Cfg, "a second batch filter", build=lambda n, c, m: n))
    try:
        with pytest.raises(ConfigError, match=r"methods \['sb', 'other_filter'\] all claim the 'batches' slot"):
            from_dict(TrainConfig, {"methods": {"sb": {}, "other_filter": {}}}, "train")
    finally:
        unregister("other_filter")
    assert "other_filter" not in METHODS


def test_data_source_needs_path():
    with pytest.raises(ConfigError, match=r"data.path=None.*idx"):
        from_dict(DataConfig, {"source": "idx"}, "data")
    with pytest.raises(ConfigError, match=r"data.source='hub'"):
        from_dict(DataConfig, {"source": "hub"}, "data")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(p)


def test_missing_params_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--params"):
        load_params(tmp_path / "nope.yaml")


def test_section_not_a_mapping(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_section(p, "train", TrainConfig)


def test_overrides_apply_on_top(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  seed: 1\n")
    assert load_section(p, "train", TrainConfig, seed=7).seed == 7
    assert load_section(p, "train", TrainConfig, seed=None).seed == 1


def test_method_then_merge_keys_layer_over_the_section(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("proxy:\n  epochs: 2\n  lr: 0.1\n  model: {name: cnn, args: {channels: [8, 16]}}\n"
                 "method:\n  fast: {lr: 0.2}\n"
                 "proxy_models:\n  mlp: {model: {name: mlp, args: {hidden: [16]}}}\n  bad: 3\n")
    cfg = load_train_config(p, "proxy", "fast", ["proxy_models.mlp"], seed=4)
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.label) == (2, 0.2, 4, "fast")
    assert cfg.model.name == "mlp" and cfg.model.args == {"hidden": [16]}
    with pytest.raises(ConfigError, match="has no params key proxy_models.resnet"):
        load_train_config(p, "proxy", merge=["proxy_models.resnet"])
    with pytest.raises(ConfigError, match="proxy_models.bad must be a mapping"):
        load_train_config(p, "proxy", merge=["proxy_models.bad"])
