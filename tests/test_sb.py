"""Selective-Backprop and Stale-SB: the pure functions, the node, and the method in the trainer."""

import math

import numpy as np
import pytest
import torch
from torchdata.nodes import Loader, Mapper

from selectkit.config import ConfigError
from selectkit.graph import InputGraph, collect_counters
from selectkit.losstable import LossTable
from selectkit.methods.sb.functions import LossWindow, cdf, keep_probability, loss_threshold, select
from selectkit.methods.sb.node import SelectiveBackprop
from selectkit.nodes import IdBatchSampler, Rebatch
from selectkit.train import Trainer

from conftest import tiny_train_cfg
from resume_harness import check_graph_resume, check_resume, run_epoch


# ---------------------------------------------------------------- pure functions
def test_cdf_hand_computed_with_ties():
    np.testing.assert_allclose(cdf([0.5, 2, 2.5, 4, 5], [1, 2, 3, 4]), [0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(cdf([1, 2, 1.5], [1, 1, 2, 2]), [0.5, 1.0, 0.5])  # ties count as at-or-below


def test_keep_probability_and_floor():
    np.testing.assert_allclose(keep_probability([0.5, 1.0, 0.0], beta=2), [0.25, 1.0, 0.0])
    np.testing.assert_allclose(keep_probability([0.5, 0.1], beta=2, floor=0.1), [0.25, 0.1])


def test_batch_joins_window_before_ranking():
    w = LossWindow(8)
    p = []
    select(np.array([1.0, 2.0, 3.0, 4.0]), w, beta=1.0, floor=0.0, rng=np.random.default_rng(0), out_p=p)
    np.testing.assert_allclose(p[0], [0.25, 0.5, 0.75, 1.0])


def test_window_is_a_ring_and_round_trips():
    w = LossWindow(3)
    w.push(np.array([1.0, 2.0]))
    w.push(np.array([3.0, 4.0, 5.0]))
    assert sorted(w.current().tolist()) == [3.0, 4.0, 5.0] and w.count == 5
    w2 = LossWindow(3)
    w2.load(w.state())
    assert w2.current().tolist() == w.current().tolist()
    with pytest.raises(ValueError, match="sb.window=4"):
        LossWindow(4).load(w.state())
    with pytest.raises(ValueError, match="size=0"):
        LossWindow(0)


def test_loss_threshold():
    assert loss_threshold(np.arange(1, 101), beta=1) == 50
    assert loss_threshold(np.arange(1, 101), beta=2) == 71  # 0.5 ** 0.5 = 0.707: the 71st of 100


def _kept_fraction(beta, floor=0.0, n_batches=200, bs=128):
    rng_losses = np.random.default_rng(0)
    w, rng = LossWindow(1024), np.random.default_rng(1)
    kept = [select(rng_losses.random(bs), w, beta, floor, rng) for _ in range(n_batches)]
    return np.concatenate(kept).mean()


def test_kept_fraction_falls_with_beta_and_matches_expectation():
    betas = [0.5, 1.0, 2.0, 3.0, 5.0]
    fractions = [_kept_fraction(b) for b in betas]
    assert all(a > b for a, b in zip(fractions, fractions[1:]))
    for b, f in zip(betas, fractions):  # uniform losses: CDF ~ U(0,1), E[U^beta] = 1 / (beta + 1)
        assert f == pytest.approx(1 / (b + 1), abs=0.02)


def test_beta_to_zero_is_traditional():
    assert _kept_fraction(1e-9) == 1.0


# ---------------------------------------------------------------- the node
class _Scorer:
    """Loss of example i is f(i) = (i % 97) / 97: known per id, so pairing can be checked."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def __call__(self, x, y):
        self.calls += 1
        self.rows += len(x)
        return torch.as_tensor((x[:, 0].numpy() % 97) / 97.0, dtype=torch.float32)


def loss_of(ids):
    return (np.asarray(ids) % 97) / 97.0


def _synthetic(ids_batch):
    ids = ids_batch["ids"]
    return {**ids_batch, "ids": torch.from_numpy(ids), "x": torch.from_numpy(ids.astype(np.float32))[:, None],
            "y": torch.zeros(len(ids), dtype=torch.long)}


def make_sb(scorer=None, n=500, staleness=1, warmup=0, beta=2.0, bs=64, out_bs=32, seed=0, floor=0.0):
    src = Mapper(IdBatchSampler(np.arange(n), bs, seed=seed), _synthetic)
    node = SelectiveBackprop(src, scorer or _Scorer(), LossTable(n), "fp", beta=beta, window=256, floor=floor,
                             warmup_epochs=warmup, staleness=staleness, seed=seed)
    return node, Rebatch(node, out_bs)


def sb_graph(sb, node):
    """The node in an InputGraph wired as build_input_graph wires it: the graph feeds the shared
    loss table, then the node's listener, and checkpoints the table beside the loader."""
    return InputGraph(Loader(node, restart_on_stop_iteration=False), node, sb.table, [("sb", sb.observe)], 64)


def test_node_keeps_high_losses_and_emits_full_batches():
    sb, node = make_sb(beta=3.0)
    out = run_epoch(node)
    kept = np.concatenate([b["ids"] for b in out])
    assert all(len(b["ids"]) == 32 for b in out[:-1])
    assert len(set(kept.tolist())) == len(kept)  # no example twice
    assert loss_of(kept).mean() > loss_of(np.arange(500)).mean() + 0.15
    c = sb.counters()
    assert c["sb/candidates"] == 500 and c["sb/kept"] == len(kept) == c["sb/kept_fraction"] * 500
    assert c["sb/selection_forwarded"] == 500


def test_warmup_epochs_pass_everything_without_forwards():
    scorer = _Scorer()
    sb, node = make_sb(scorer, warmup=1)
    assert len(np.concatenate([b["ids"] for b in run_epoch(node)])) == 500
    assert scorer.calls == 0
    run_epoch(node)
    assert scorer.rows == 500


def test_stale_sb_forwards_only_every_nth_epoch_and_pairs_losses_with_their_examples():
    scorer = _Scorer()
    sb, node = make_sb(scorer, staleness=3)
    rows_per_epoch, kept_per_epoch = [], []
    for epoch in range(6):
        before = scorer.rows
        kept_per_epoch.append(np.concatenate([b["ids"] for b in run_epoch(node)]))
        rows_per_epoch.append(scorer.rows - before)
        # every stored loss belongs to the example that produced it
        np.testing.assert_allclose(sb.table.values, loss_of(np.arange(500)), rtol=1e-6)
    assert rows_per_epoch == [500, 0, 0, 500, 0, 0]
    assert sb.counters()["sb/stale_selected"] == 4 * 500 and sb.counters()["sb/selection_forwarded"] == 2 * 500
    for kept in kept_per_epoch:  # stale epochs select by the same per-example losses
        assert loss_of(kept).mean() > loss_of(np.arange(500)).mean() + 0.1


def test_training_losses_refresh_the_table():
    sb, node = make_sb(staleness=2)
    graph = sb_graph(sb, node)
    run_epoch(node)
    graph.observe(torch.tensor([3, 5]), torch.tensor([9.0, 7.0]), step=0)  # what the trainer calls
    assert sb.table[3] == 9.0 and sb.table[5] == 7.0 and sb.table[4] == pytest.approx(loss_of(4))
    # the stale epoch selects by the refreshed losses, without a forward overwriting them
    kept = np.concatenate([b["ids"] for b in run_epoch(node)])
    assert 3 in kept.tolist()  # the largest loss in the window: kept with probability 1
    assert sb.table[3] == 9.0 and sb.table[5] == 7.0


def test_warmup_training_losses_fill_the_window_until_selection_starts():
    sb, node = make_sb(warmup=1)
    run_epoch(node)  # warm-up: nothing selected
    sb.observe(torch.tensor([3, 5]), torch.tensor([9.0, 7.0]), step=0)
    assert sb.window.count == 2 and sorted(sb.window.current().tolist()) == [7.0, 9.0]
    run_epoch(node)  # selection started: its own losses join the window, the trainer's no longer do
    count = sb.window.count
    sb.observe(torch.tensor([3]), torch.tensor([1.0]), step=1)
    assert sb.window.count == count == 2 + 500


def test_unscored_examples_get_a_forward_in_stale_epochs():
    scorer = _Scorer()
    sb, node = make_sb(scorer, staleness=3)
    run_epoch(node)
    sb.table.values[:100] = np.nan  # e.g. examples that joined the candidate set since the last fresh epoch
    before = scorer.rows
    run_epoch(node)  # epoch 1 is stale: only the batches holding unscored ids are forwarded
    forwarded = scorer.rows - before
    assert forwarded == 100
    np.testing.assert_allclose(sb.table.values, loss_of(np.arange(500)), rtol=1e-6)


def test_nan_losses_name_ids_and_epoch():
    def bad(x, y):
        out = torch.zeros(len(x))
        out[2] = math.nan
        return out
    _, node = make_sb(bad)
    with pytest.raises(FloatingPointError, match=r"epoch 0 for example ids \[\d+\]"):
        run_epoch(node)


def test_node_validates():
    with pytest.raises(ValueError, match="beta=0"):
        make_sb(beta=0)
    with pytest.raises(ValueError, match="floor=2"):
        make_sb(floor=2)


def test_resume_state_from_other_store_or_staleness():
    sb, node = make_sb(staleness=3)
    state = node.state_dict()
    _, other = make_sb(staleness=2)
    with pytest.raises(ValueError, match="resumed Selective-Backprop state.*sb.staleness"):
        other.reset(state)


@pytest.mark.parametrize("staleness, stop_after", [(1, 5), (3, 3)])
def test_resume_sb_node(staleness, stop_after):
    check_resume(lambda: make_sb(staleness=staleness)[1], stop_after=stop_after)
    # with the trainer's losses fed back, stale epochs select by them: the loss table must resume too
    check_graph_resume(lambda: sb_graph(*make_sb(staleness=staleness)), stop_after=stop_after)


def test_node_state_holds_its_counters():
    sb, node = make_sb()
    node.reset(None)
    next(node)
    state = node.state_dict()
    assert collect_counters(state) == sb.counters() and sb.counters()["sb/candidates"] > 0
    sb2, node2 = make_sb()
    node2.reset(state)
    assert sb2.counters() == sb.counters()


# ---------------------------------------------------------------- config and the trainer
@pytest.mark.parametrize("values, match", [
    ({"methods": {"sb": {"beta": 0.0}}}, r"train.methods.sb.beta=0.0.*> 0"),
    ({"methods": {"sb": {"window": 0}}}, r"train.methods.sb.window=0"),
    ({"methods": {"sb": {"staleness": 0}}}, r"train.methods.sb.staleness=0"),
    ({"methods": {"sb": {"selection_mode": "half"}}}, r"train.methods.sb.selection_mode='half'"),
    ({"methods": {"sb": {"selection_batch_size": 32}}, "input": {"batch_size": 64}},
     r"train.methods.sb.selection_batch_size=32.*>= input.batch_size \(64\)"),
    ({"methods": {"sb": {"warmup_epochs": 2}}, "epochs": 2}, r"train.methods.sb.warmup_epochs=2"),
])
def test_sb_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        tiny_train_cfg(**values)


SB = {"methods": {"sb": {"beta": 2.0, "selection_batch_size": 128}}}
STALE = {"methods": {"sb": {"beta": 2.0, "selection_batch_size": 128, "staleness": 3}}}


def test_sb_training_run_accounting(digits_store):
    r = Trainer(digits_store, tiny_train_cfg(epochs=4, **STALE)).fit()
    n = len(digits_store.train)
    c = r.metrics["counters"]
    assert r.metrics["label"] == "sb" and r.metrics["methods"]["sb"]["staleness"] == 3
    # the default precision is auto: measured (equal timings here: tests/conftest.py), fp32 kept
    # and the default selection_fold is auto: the tiny CNN folds, equal timings prefer the fold
    assert r.metrics["selection"] == {"batch_size": 128, "mode": "eval", "precision": "fp32",
                                      "auto": {"precision": "fp32", "fp32_ms": 1.0, "bf16_ms": 1.0},
                                      "fold": True, "fold_auto": {"folded": True, "live_ms": 1.0, "folded_ms": 1.0}}
    assert c["sb/candidates"] == 4 * n
    assert c["sb/selection_forwarded"] == 2 * n  # epochs 0 and 3 are fresh
    assert r.metrics["examples_backpropagated"] == c["sb/kept"] < 0.6 * 4 * n
    assert r.metrics["seconds"]["selection"] > 0
    assert r.metrics["final_test_error"] < 0.3
    assert "sb/kept_fraction" in r.curve[-1]


def test_graph_feeds_the_sb_nodes_table(digits_store):
    """The SB node reads the graph's one LossTable, which the trainer's losses refresh."""
    t = Trainer(digits_store, tiny_train_cfg(**SB))
    node = t.graph.root
    while not isinstance(node, SelectiveBackprop):
        node = node.source
    assert t.graph.loss_table is node.table and len(node.table.values) == len(digits_store.train)
    assert t.graph.listens
    t.graph.observe(torch.tensor([3, 5]), torch.tensor([9.0, 7.0]), step=0)
    assert node.table[3] == 9.0 and node.table[5] == 7.0 and np.isnan(node.table[4])
    assert node.window.count == 2  # nothing selected yet: the trainer's losses fill the window
    assert t.graph.state_dict()["loss_table"]["values"][3] == 9.0


def test_model_handle_checks_mode_and_device(digits_store):
    t = Trainer(digits_store, tiny_train_cfg(**SB))
    x = torch.randn(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    assert t.handle.losses(x, y).shape == (4,) and t.model.training
    t.model.eval()
    with pytest.raises(RuntimeError, match="eval mode between training steps"):
        t.handle.losses(x, y)
    t.model.train()
    t.handle.device = torch.device("meta")
    with pytest.raises(RuntimeError, match="model is on cpu but selection scores it on meta: move the model"):
        t.handle.losses(x, y)


def test_bf16_selection_ranks_like_fp32(digits_store):
    t = Trainer(digits_store, tiny_train_cfg(**SB))
    b = next(iter(t.graph))
    fp32 = t.handle.losses(b["x"], b["y"])
    bf16 = t.handle.losses(b["x"], b["y"], precision="bf16")
    assert bf16.dtype == torch.float32 and t.model.training
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    assert np.corrcoef(bf16.numpy(), fp32.numpy())[0, 1] > 0.99


def test_stale_epochs_load_only_the_kept_rows_and_train_as_if_all_were_loaded(monkeypatch, digits_store):
    """Without a prefetch thread, Stale-SB's stale epochs decide on ids and load only the rows
    they keep: the same batches, steps and weights as loading every candidate first."""
    from selectkit.tasks.image import LoadBatch

    loaded = []
    real = LoadBatch.__call__

    def counting(self, item):
        if "num_batches" in item:  # the training graph's candidates (not the test split's batches)
            loaded.append((int(item["epoch"]), len(item["ids"])))
        return real(self, item)

    monkeypatch.setattr(LoadBatch, "__call__", counting)
    stale = {"methods": {"sb": {"beta": 2.0, "selection_batch_size": 128, "staleness": 2}}}
    runs = {}
    for prefetch in (0, 1):
        loaded.clear()
        t = Trainer(digits_store, tiny_train_cfg(epochs=3, input={"prefetch": prefetch}, **stale))
        r = t.fit()
        runs[prefetch] = (r, torch.cat([p.detach().flatten() for p in t.model.parameters()]).numpy(), list(loaded))
    (r0, w0, l0), (r1, w1, l1) = runs[0], runs[1]
    assert np.array_equal(w0, w1) and r0.metrics["steps"] == r1.metrics["steps"]
    strip = lambda c: {k: v for k, v in c.items() if not k.endswith(("_s", "_ms"))}
    assert strip(r0.metrics["counters"]) == strip(r1.metrics["counters"])
    n = len(digits_store.train)
    rows = lambda log, epoch: sum(k for e, k in log if e == epoch)
    assert rows(l1, 1) >= n  # loading first: every candidate of the stale epoch 1 (and any run ahead)
    assert rows(l0, 0) == n and rows(l0, 2) == n  # fresh epochs: every candidate, for its forward
    assert 0 < rows(l0, 1) < 0.6 * n  # the stale epoch: the kept rows only (beta 2 keeps about a third)


def test_deferred_stale_epochs_cut_every_per_row_field_with_the_rows_kept():
    """An earlier method's per-row field (InfoBatch's weights) stays aligned with its rows when a
    stale epoch's candidates come unloaded and the node loads only what it keeps."""
    from selectkit.graph import DeferrableLoad

    def add_weight(item):  # a per-row field added before loading, as InfoBatch's weights are
        return {**item, "weight": np.asarray(item["ids"], dtype=np.float32) / 1000.0}

    defer = []
    src = Mapper(Mapper(IdBatchSampler(np.arange(500), 64, seed=0), add_weight), DeferrableLoad(_synthetic, defer))
    sb = SelectiveBackprop(src, _Scorer(), LossTable(500), "fp", beta=2.0, window=256, staleness=2, seed=0)
    sb.load = _synthetic
    defer.append(sb.is_stale)
    node = Rebatch(sb, 32)
    run_epoch(node)  # fresh: everything loaded
    stale = run_epoch(node)  # stale: only the kept rows loaded
    assert sb.counters()["sb/stale_selected"] == 500
    for b in stale:
        assert np.allclose(np.asarray(b["weight"]), np.asarray(b["ids"], dtype=np.float32) / 1000.0)
        assert len(b["x"]) == len(b["ids"]) == len(b["weight"])


def _sb_written_out(trainer, sb_cfg, cfg):
    """Selective-Backprop / Stale-SB written out in one loop, as the paper's pseudo-code reads,
    drawing from the streams selectkit documents: each epoch's order from ``default_rng([seed,
    epoch])``, the keep/skip draws from ``default_rng([seed, 0x5B])``, the weights from
    ``manual_seed(seed)``. Returns the ids of every training step and the trained model."""
    import torch.nn.functional as F

    from selectkit.graph import candidate_ids
    from selectkit.models import make_model
    from selectkit.optim import lr_at, make_optimizer

    task = trainer.task
    torch.manual_seed(cfg.seed)
    model = task.prepare_model(make_model(cfg.model, task), torch.device("cpu"))
    opt = make_optimizer(model, cfg)
    ids = candidate_ids(task, None, "train")
    whole = task.loader()({"ids": np.arange(len(task)), "epoch": 0, "index": 0, "num_batches": 1})
    x_all, y_all = task.to_device(whole, torch.device("cpu"))
    rng = np.random.default_rng([cfg.seed, 0x5B])
    window, pushed = np.zeros(sb_cfg["window"]), 0
    table = torch.full((len(task),), float("nan"))
    bs, cand = cfg.input.batch_size, sb_cfg["selection_batch_size"]
    steps = []

    def train(idx, progress):
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx], reduction="none")
        table[idx] = loss.detach()  # training forwards refresh the loss table too
        steps.append(idx.tolist())
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, cfg)
        opt.step()

    model.train()
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(ids[np.random.default_rng([cfg.seed, epoch]).permutation(len(ids))])
        nb = -(-len(order) // cand)
        pending = []
        for i in range(nb):
            idx = order[i * cand:(i + 1) * cand]
            losses = table[idx].clone()
            rows = (torch.arange(len(idx)) if epoch % sb_cfg["staleness"] == 0
                    else torch.nonzero(torch.isnan(losses)).flatten())
            if len(rows):  # fresh epochs score every candidate, stale ones those never scored
                model.eval()
                with torch.no_grad():
                    fresh = F.cross_entropy(model(x_all[idx[rows]]), y_all[idx[rows]], reduction="none")
                model.train()
                losses[rows] = fresh
                table[idx[rows]] = fresh
            lv = losses.numpy().astype(np.float64)
            window[(pushed + np.arange(len(lv))) % len(window)] = lv  # the batch joins the window first
            pushed += len(lv)
            ranked = np.sort(window[:min(pushed, len(window))])
            p = (np.searchsorted(ranked, lv, side="right") / len(ranked)) ** sb_cfg["beta"]
            pending += idx[torch.from_numpy(rng.random(len(p)) < p)].tolist()
            progress = (epoch + (i + 1) / nb) / cfg.epochs
            while len(pending) >= bs:
                train(torch.tensor(pending[:bs]), progress)
                del pending[:bs]
        if pending:  # the epoch's leftover kept rows: one smaller batch
            train(torch.tensor(pending), progress)
    return steps, model


@pytest.mark.parametrize("selection_batch_size,staleness", [(64, 1), (160, 3)])
def test_trainer_trains_exactly_as_sb_written_out(digits_store, selection_batch_size, staleness):
    """The whole path (sampler, loading, node, window, draws, re-batching, loss table, schedule)
    against the algorithm written out by hand: the same examples in every step and the same
    weights, bit for bit. (benchmarks/vs_loop.py's hand-written loop follows the same recipe.)"""
    sb = {"beta": 2.0, "window": 200, "selection_batch_size": selection_batch_size, "selection_precision": "fp32",
          "selection_fold": False, "staleness": staleness}
    cfg = tiny_train_cfg(epochs=3, input={"batch_size": 32, "prefetch": 0}, eval_every=0, methods={"sb": sb})
    trainer = Trainer(digits_store, cfg)
    seen = []
    trainer.graph.listeners.append(("test-recorder", lambda ids, losses, step: seen.append(ids.tolist())))
    trainer.fit()
    steps, model = _sb_written_out(trainer, sb, cfg)
    assert 0 < sum(map(len, seen)) < 0.8 * cfg.epochs * len(trainer.ids)  # SB kept a part of the candidates
    assert seen == steps
    live = trainer.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(live[name], value), name
