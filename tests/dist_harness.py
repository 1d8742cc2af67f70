"""Run in each of several processes (torch.multiprocessing.spawn) by tests/test_ddp.py: every
scenario there trains under a gloo process group on CPU and leaves its results in files for the
test (in the parent process) to check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def params_vector(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().astype(np.float64)


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))


def _save(out: Path, name: str, rank: int, **arrays) -> None:
    np.savez(out / f"{name}-rank{rank}.npz", **arrays)


def _json(out: Path, name: str, rank: int, obj) -> None:
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(obj, default=float))


def worker(rank: int, world: int, port: int, store_path: str, out: str, examples: dict) -> None:
    """Every scenario in turn, in one process group (one start-up for all of them)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    _env(rank, world, port)
    from conftest import tiny_train_cfg
    from selectkit import dist
    from selectkit.store import Store
    from selectkit.train import Trainer

    out = Path(out)
    store = Store(store_path)
    timeout = {"dist_timeout_s": 60.0}  # a hang fails the test within a minute

    # 1. Traditional, an MLP (no BatchNorm), 32 per rank: the same global batches of 64 as one process
    cfg = tiny_train_cfg(epochs=1, model={"name": "mlp", "args": {"hidden": [32]}}, eval_every=0,
                         input={"batch_size": 32, "prefetch": 1}, **timeout)
    t = Trainer(store, cfg, ids=np.arange(1280))
    r = t.fit()
    _save(out, "traditional", rank, params=params_vector(t.model))
    if rank == 0:
        _json(out, "traditional", rank, r.metrics)

    # 2. sharded scoring of that model
    from selectkit.methods.svp.artifacts import score_store

    scores = score_store(t.model, t.task, torch.device("cpu"), 100, embeddings=True, rank=rank, world_size=world)
    _save(out, "scores", rank, **scores)
    if rank == 0:  # one process, same machine, same model
        _save(out, "scores-alone", rank, **score_store(t.model, t.task, torch.device("cpu"), 100, embeddings=True))

    # 3. SB where rank 1 keeps 2 candidates per batch and rank 0 about a third: very different
    # numbers of training batches per epoch
    import selectkit.methods.sb.node as sbnode

    real_select = sbnode.select

    def starved(losses, window, beta, floor, rng, out_p=None):
        keep = real_select(losses, window, beta, floor, rng, out_p)
        keep[:] = False
        keep[:2] = True
        return keep

    if rank == 1:
        sbnode.select = starved
    sb = {"sb": {"beta": 1.0, "selection_batch_size": 64}}
    cfg = tiny_train_cfg(epochs=2, methods=sb, input={"batch_size": 32, "prefetch": 1}, eval_every=0, **timeout)
    t = Trainer(store, cfg)
    r = t.fit()
    sbnode.select = real_select
    _save(out, "skew", rank, params=params_vector(t.model))
    if rank == 0:
        _json(out, "skew", rank, r.metrics)

    # 4. SB and Stale-SB, plain: the kept fraction, and every rank's window holds every rank's losses
    cfg = tiny_train_cfg(epochs=3, methods={"sb": {"beta": 2.0, "selection_batch_size": 64, "staleness": 2}},
                         input={"batch_size": 32, "prefetch": 1}, eval_every=0, **timeout)
    t = Trainer(store, cfg)
    r = t.fit()
    node = next(n for n in _nodes(t.graph.root) if type(n).__name__ == "SelectiveBackprop")
    _json(out, "sb", rank, {"window_count": node.window.count, "metrics": r.metrics})
    _save(out, "sb", rank, table=t.graph.loss_table.values, window=node.window.sorted())

    # 5. stop (a signal on rank 1) mid-epoch, resume: the same model as an uninterrupted run
    ck = out / "ck.pt"
    # selection_fold pinned: under auto the whole run and the stopped one each time live against
    # folded on their first batch, and a near tie can go either way (each is the same function
    # up to rounding, not bit for bit); a resume keeps its own run's choice (tests/test_train.py)
    cfg = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": 64, "staleness": 2,
                                                   "selection_fold": False}},
                         input={"batch_size": 32, "prefetch": 2}, eval_every=4, **timeout)
    whole = Trainer(store, cfg)
    whole.fit()
    stopped = Trainer(store, cfg, checkpoint_path=ck)
    real_step = stopped._step

    def step_then_stop(batch, *a, **k):
        real_step(batch, *a, **k)
        if rank == 1 and stopped.p.step == 13:
            stopped.request_stop("SIGTERM")

    stopped._step = step_then_stop
    try:
        stopped.fit()
        interrupted = None
    except KeyboardInterrupt as e:
        interrupted = str(e)
    resumed = Trainer(store, cfg, checkpoint_path=ck)
    rr = resumed.fit(resume=ck)
    _save(out, "resume", rank, whole=params_vector(whole.model), resumed=params_vector(resumed.model))
    if rank == 0:
        _json(out, "resume", rank, {"interrupted": interrupted, "curve": rr.curve,
                                    "whole_curve": whole.p.history, "metrics": rr.metrics})
        saved = torch.load(ck, weights_only=False)
        _json(out, "checkpoint", rank, {"world_size": saved["world_size"], "ranks": len(saved["ranks"])})

    # 7. a wall-clock budget: rank 0's clock ends the run on every rank at the same step
    cfg = tiny_train_cfg(epochs=50, budget_s=0.6, eval_every=0, eval_every_s=0.2, **timeout,
                         methods={"sb": {"beta": 1.0, "selection_batch_size": 64}}, input={"batch_size": 32, "prefetch": 1})
    t = Trainer(store, cfg)
    r = t.fit()
    _save(out, "budget", rank, params=params_vector(t.model), step=np.array(t.p.step))
    if rank == 0:
        _json(out, "budget", rank, r.metrics)

    # 6. every registered online method, one epoch: nothing hangs, every rank ends with one model
    for name, params in examples.items():
        cfg = tiny_train_cfg(epochs=2, methods={name: params}, input={"batch_size": 32, "prefetch": 1},
                             eval_every=0, **timeout)
        t = Trainer(store, cfg)
        r = t.fit()
        _save(out, f"method-{name}", rank, params=params_vector(t.model))
        if rank == 0:
            _json(out, f"method-{name}", rank, r.metrics)
    dist.shutdown()


def _nodes(node):
    while node is not None:
        yield node
        node = getattr(node, "source", None)
