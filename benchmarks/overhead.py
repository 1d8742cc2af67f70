"""Benchmark: overhead of selectkit's input graph + tracking against a plain PyTorch loop.

Both train the same model with the same arithmetic (batch 128, per-example cross-entropy
averaged, SGD nesterov, warm-up + cosine schedule set every step, channels_last) on
Fashion-MNIST for one epoch per round:

- plain:     the whole train split as one normalised in-memory tensor, torch.randperm order,
             slicing batches by hand; no loader, no tracking, no checkpoints.
- selectkit: the Trainer: IdBatchSampler -> LoadBatch from the memory-mapped store ->
             Prefetcher -> Loader, MLflow tracking to a fresh SQLite store, checkpoints.

Rounds are interleaved in one process (the arms' order rotates each round) so machine drift
hits every arm; the figure is the ratio of per-step times (evaluation excluded from both;
selectkit's checkpoint writes included). selectkit runs twice per round: with its default
prefetch thread (input.prefetch=2) and loading in the training thread (input.prefetch=0). Also prints the cost per example of a per-example
node chain (IterableWrapper -> Batcher) against the fused IdBatchSampler.

    python benchmarks/overhead.py [--store data/store] [--rounds 4]
"""

import argparse
import math
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from selectkit.config import TrackingConfig, TrainConfig, train_config
from selectkit.models import build_model
from selectkit.optim import lr_at
from selectkit.tasks import ImageSpec
from selectkit.store import Store
from selectkit.tracking import Tracker
from selectkit.train import Trainer

CFG = {"model": {"name": "cnn", "args": {"channels": [32, 64]}}, "epochs": 1, "eval_every": 0,
       "input": {"batch_size": 128, "prefetch": 2}, "warmup": 0.05}


def plain_epoch(store: Store, cfg: TrainConfig, x_all: torch.Tensor, y_all: torch.Tensor) -> tuple:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ImageSpec(store.image_shape), store.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    model.train()
    bs, n = cfg.input.batch_size, len(y_all)
    nb = math.ceil(n / bs)
    t0 = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(nb):
        idx = perm[i * bs:(i + 1) * bs]
        x = x_all[idx].contiguous(memory_format=torch.channels_last)
        y = y_all[idx]
        loss = F.cross_entropy(model(x), y, reduction="none").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr_at((i + 1) / nb, cfg)
        opt.step()
    return time.perf_counter() - t0, nb


def selectkit_epoch(store: Store, cfg: TrainConfig, tracking: TrackingConfig) -> tuple:
    """One tracked, checkpointed epoch of the Trainer; returns (train seconds, steps)."""
    trainer = Trainer(store, cfg, checkpoint_path=os.path.join(tracking.uri.split("///")[1] + ".ckpt"))
    tracker = Tracker(tracking, stage="train", run_name="overhead-bench")
    trainer.tracker = tracker
    with tracker.run({"train": {"epochs": cfg.epochs}}):
        r = trainer.fit()
    s = r.metrics["seconds"]
    return trainer.clock.train_s + s["checkpoint"], r.metrics["steps"]


def node_cost(n: int = 60000, bs: int = 128) -> tuple:
    from torchdata.nodes import Batcher, IterableWrapper

    from selectkit.nodes import IdBatchSampler

    def per_example():
        node = Batcher(IterableWrapper(range(n)), bs, drop_last=False)
        node.reset(None)
        t0 = time.perf_counter()
        for _ in node:
            pass
        return time.perf_counter() - t0

    def fused():
        node = IdBatchSampler(np.arange(n), bs)
        node.reset(None)
        t0 = time.perf_counter()
        for _ in node:
            pass
        return time.perf_counter() - t0

    return min(per_example() for _ in range(3)) / n * 1e6, min(fused() for _ in range(3)) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/store")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    store = Store(args.store)
    cfg = train_config(CFG, "train")
    cfg0 = train_config({**CFG, "input": {**CFG["input"], "prefetch": 0}}, "train")
    x_all = torch.from_numpy(np.asarray(store.train.x)).float().div_(255)
    x_all = (x_all - store.meta["mean"][0]) / store.meta["std"][0]
    y_all = torch.from_numpy(np.asarray(store.train.y))
    tmp = tempfile.mkdtemp(prefix="selectkit-bench-")
    tracking = TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", experiment="overhead-bench")
    plain_epoch(store, cfg, x_all, y_all)  # warm-up both paths once
    selectkit_epoch(store, cfg, tracking)
    arms = {"plain": lambda: plain_epoch(store, cfg, x_all, y_all),
            "selectkit": lambda: selectkit_epoch(store, cfg, tracking),
            "selectkit-prefetch0": lambda: selectkit_epoch(store, cfg0, tracking)}
    names = list(arms)
    ratios = {k: [] for k in names[1:]}
    for r in range(args.rounds):
        res = {}
        for kind in names[r % 3:] + names[:r % 3]:
            t, steps = arms[kind]()
            res[kind] = 1e3 * t / steps
        for k in ratios:
            ratios[k].append(res[k] / res["plain"])
        print(f"round {r}: " + ", ".join(f"{k} {v:.2f} ms/step" for k, v in res.items()), flush=True)
    pe, fu = node_cost()
    print(f"\n# torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k, rs in ratios.items():
        print(f"{k} / plain step time: median {statistics.median(rs):.3f} "
              f"(min {min(rs):.3f}, max {max(rs):.3f}) over {len(rs)} interleaved rounds")
    print(f"input stream: per-example nodes (IterableWrapper -> Batcher) {pe:.2f} us/example, "
          f"fused IdBatchSampler {fu:.3f} us/example")


if __name__ == "__main__":
    main()
