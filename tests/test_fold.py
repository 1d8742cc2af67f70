"""BatchNorm folded into the convolutions for selection forwards (selectkit/fold.py,
``selection_fold``). The folded view must compute the live model's eval-mode function at every
step of training; nothing here asserts a time (the ``auto`` choice sees injected timings)."""

import pytest
import torch
from torch import nn

from selectkit.fold import FoldedView, check_foldable
from selectkit.handle import ModelHandle
from selectkit.train import Trainer
from selectkit.validation import ConfigError

from conftest import tiny_train_cfg


def _perturb_bn(model, seed=0):
    """BatchNorm statistics and affine parameters far from their initial 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def _eval_out(model, x):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    return out


class Branchy(nn.Module):
    """Conv -> BN pairs of every dimension, a BatchNorm without affine parameters, a conv without
    bias, a conv whose output is also used elsewhere (not foldable), a BN after a Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.c2, self.b2 = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5, affine=False)
        self.c3, self.b3 = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)  # c3 also feeds the skip
        self.grouped, self.bg = nn.Conv2d(5, 10, 3, padding=1, groups=5), nn.BatchNorm2d(10)
        self.fc, self.bf = nn.Linear(4 + 5 + 10 + 5, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x.mean(3)))).mean(2)
        b = self.b2(self.c2(x)).mean((2, 3))
        h = self.c3(x)
        c = self.bg(self.grouped(torch.relu(self.b3(h)) + h)).mean((2, 3))
        return self.bf(self.fc(torch.cat([a, b, c, h.mean((2, 3))], 1)))


def test_the_view_computes_the_eval_forward_and_follows_training():
    torch.manual_seed(0)
    model = _perturb_bn(Branchy())
    x = torch.randn(8, 3, 6, 6)
    view, why = FoldedView.build(model)
    assert why == "" and view is not None
    # c1/b1, c2/b2 and grouped/bg fold; c3 feeds a skip too, the Linear's BN is no conv's
    assert sorted(type(c).__name__ for _, c, _ in view.pairs) == ["Conv1d", "Conv2d", "Conv2d"]
    assert model.training  # building it leaves the model's mode alone...
    with torch.no_grad():  # ...and calling it runs the eval forward (b3 and bf unfolded) in any mode
        assert torch.allclose(view(x), _eval_out(model, x), rtol=1e-5, atol=1e-5)
    assert model.training
    # a training step moves weights and running statistics: the view recomputes from them
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).square().sum().backward()
    opt.step()
    after = _eval_out(model, x)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(after, view.module(x), atol=1e-3)  # stale until refreshed...
        assert torch.allclose(view(x), after, rtol=1e-5, atol=1e-5)  # ...which every call does


def test_the_reference_cnn_folds_in_channels_last():
    from selectkit.config import ModelConfig
    from selectkit.models import build_model
    from selectkit.tasks import task_class

    spec = task_class("image_classification").make_spec({"shape": [1, 8, 8]})
    model = _perturb_bn(build_model(ModelConfig("cnn", {"channels": [4, 8]}), spec, 10)).to(
        memory_format=torch.channels_last)
    view, _ = FoldedView.build(model)
    assert len(view.pairs) == 2
    assert all(f.weight.is_contiguous(memory_format=torch.channels_last) for f, _, _ in view.pairs)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # where selection runs
        assert torch.allclose(view(x), _eval_out(model, x), rtol=1e-5, atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.b = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx refuses it
            x = -x
        return self.b(self.c(x)).flatten(1)


def test_models_that_do_not_fold_say_why():
    view, why = FoldedView.build(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    assert view is None and "no convolution followed by a BatchNorm" in why
    view, why = FoldedView.build(Untraceable())
    assert view is None and "torch.fx cannot trace Untraceable" in why
    # a hook changes what the convolution computes: that pair stays unfolded
    hooked = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    view, _ = FoldedView.build(hooked)
    assert [c for _, c, _ in view.pairs] == [hooked[2]]


def test_building_a_view_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    model = Branchy()
    state = torch.get_rng_state()
    view, _ = FoldedView.build(model)  # a training run's next draws stay what they were
    assert view is not None and torch.equal(torch.get_rng_state(), state)


def _handle_losses(model, fold, n=32, seed=0):
    from selectkit.tasks.dataset import DatasetTask

    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 6, (n,), generator=g)
    task = DatasetTask(torch.utils.data.TensorDataset(x, y), num_classes=6)
    handle = ModelHandle(model, task, torch.device("cpu"))
    return handle, handle.losses(x, y, "eval", "fp32", fold)


def test_selection_losses_folded_match_live_and_auto_records_its_choice(monkeypatch):
    torch.manual_seed(0)
    model = _perturb_bn(Branchy())
    _, live = _handle_losses(model, False)
    handle, folded = _handle_losses(model, "auto")  # equal timings (conftest): folded is preferred
    assert torch.allclose(live, folded, rtol=1e-4, atol=1e-5)
    assert handle.fold == {"folded": True, "live_ms": 1.0, "folded_ms": 1.0}
    assert handle.counters()["selection/folded"] == 1.0 and model.training
    # the live model clearly faster: auto keeps it
    times = iter([1.0, 2.0])
    monkeypatch.setattr("selectkit.autotune.time_forward", lambda forward, reps=3, sync=None: next(times))
    handle, _ = _handle_losses(model, "auto")
    assert handle.fold == {"folded": False, "live_ms": 1.0, "folded_ms": 2.0}
    # a model without a fold runs live under auto and says why
    handle, _ = _handle_losses(nn.Sequential(nn.Flatten(), nn.Linear(108, 6)), "auto")
    assert handle.fold["folded"] is False and "no convolution" in handle.fold["reason"]
    # a view whose losses do not match the live model's (here: forced) runs live under auto...
    monkeypatch.setattr("selectkit.fold.FoldedView.refresh", lambda self: [f.bias.fill_(5.0) for f, _, _ in self.pairs])
    handle, wrong = _handle_losses(model, "auto")
    assert handle.fold["folded"] is False and "differ from the live model's" in handle.fold["reason"]
    assert torch.equal(wrong, live)
    # ...and fails under true, naming the key
    with pytest.raises(ValueError, match="selection_fold: true, but"):
        _handle_losses(model, True)


def test_fold_settings_are_validated_before_any_work(digits_store):
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="selection_fold"):
            tiny_train_cfg(methods={"sb": {"selection_fold": bad}})
    with pytest.raises(ConfigError, match="selection_mode: train"):
        tiny_train_cfg(methods={"sb": {"selection_fold": True, "selection_mode": "train"}})
    tiny_train_cfg(methods={"sb": {"selection_fold": "auto", "selection_mode": "train"}})  # auto: runs live there
    # true on a model that cannot be folded: at construction, naming the key and the reason
    cfg = tiny_train_cfg(model={"name": "mlp", "args": {"hidden": [16]}}, methods={"sb": {"selection_fold": True}})
    with pytest.raises(ConfigError, match=r"train\.methods\.sb\.selection_fold: true, but "):
        Trainer(digits_store, cfg)
    stack = [(m, c) for m, c in cfg.stack]
    with pytest.raises(ConfigError, match="set it to auto"):
        check_foldable(nn.Linear(3, 3), stack)


@pytest.mark.parametrize("stack", [{"sb": {"beta": 1.0, "selection_batch_size": 64}},
                                   {"sb": {"beta": 1.0, "selection_batch_size": 64, "staleness": 2}}])
def test_a_folded_run_records_its_choice_and_trains_like_live(digits_store, stack):
    def run(fold):
        methods = {"sb": {**stack["sb"], "selection_fold": fold}}
        t = Trainer(digits_store, tiny_train_cfg(epochs=2, methods=methods))
        return t, t.fit().metrics

    t, m = run("auto")
    assert m["selection"]["fold"] is True and m["selection"]["fold_auto"]["folded"] is True
    assert m["counters"]["selection/folded"] == 1.0
    _, live = run(False)
    assert live["selection"]["fold"] is False and "selection/folded" not in live["counters"]
    # the same function up to rounding: the runs keep (nearly) the same examples
    kept = m["counters"]["sb/kept"], live["counters"]["sb/kept"]
    assert abs(kept[0] - kept[1]) <= 0.05 * kept[1]
    # (resuming a folded run mid-epoch is exact: tests/test_train.py's registry-driven resume
    # test runs SB, Stale-SB and RHO-LOSS with the default auto, which folds the tiny CNN there)
    assert t.handle.state_dict()["fold"] == m["selection"]["fold_auto"]
