"""Benchmark: selectkit against a minimal hand-written PyTorch loop, Traditional / SB / Stale-SB.

Both sides train the same CNN with the same arithmetic (BENCHMARK.md's reference setting: batch
128, SGD nesterov 0.9, wd 5e-4, peak lr 0.1, 5 % warm-up then cosine over 10 epochs of
candidates, no augmentation; SB: beta 2, R 1024, selection forwards in eval mode on candidate
batches of 128; Stale-SB: the same with selection forwards in every third epoch only, the other
epochs ranking the losses last recorded for each example). They differ only in how:

- loop:      the train split as one normalised in-memory tensor, ``torch.randperm`` order,
             batches sliced by hand, SB's window, draws and re-batching written inline, a
             per-example loss table as one tensor; no loader, no tracking, no checkpoints.
- selectkit: the Trainer with its input graph (sampler -> loading from the memory-mapped
             store -> prefetch thread -> SB node -> re-batching), MLflow tracking to a fresh
             SQLite store and checkpoints every 500 steps (the online pipeline's settings);
             ``selection_precision``, ``channels_last``, ``selection_batch_size`` and
             ``input.prefetch`` as given, by default ``auto`` (measured at the start of each run,
             in the Trainer's construction: its seconds are printed as ``setup``, outside the
             training clock of both sides). The loop's arithmetic is channels_last, fp32 selection
             forwards on batches of 128: where auto chooses otherwise (printed per run), the
             comparison includes what the library's choice buys.

Both evaluate the test split every 2 s of training wall-clock (evaluation excluded from the
clock), so times to a target error have the same resolution. Runs are interleaved: for each seed,
every method, the two sides in alternating order. The target of every method is 1.1x (and 1.2x)
Traditional's mean final error over both sides and all seeds, so the two sides' times compare
directly. Beside each measured time: its *modelled* twin (backpropagated examples times the
per-example train-step cost plus selection forwards times the per-example forward cost, both
measured interleaved in this process: ``selectkit.costs``), which carries no machine noise.

    python benchmarks/vs_loop.py --store pipelines/online-fashion-mnist/data/store --seeds 0 1 2 \
        --out benchmarks/results/vs_loop

Writes ``<out>.json`` (every curve and figure) and ``<out>.md`` (the tables), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selectkit.config import ModelConfig, TrackingConfig, train_config
from selectkit.costs import measure_costs
from selectkit.graph import candidate_ids
from selectkit.machine import cpu_name
from selectkit.models import build_model
from selectkit.optim import lr_at
from selectkit.report import modelled_seconds, time_to_error
from selectkit.store import Store
from selectkit.tasks import ImageSpec, task_for
from selectkit.tracking import Tracker
from selectkit.train import Trainer

BASE = {"model": {"name": "cnn", "args": {"channels": [32, 64]}}, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
        "nesterov": True, "weight_decay": 0.0005, "schedule": "cosine", "warmup": 0.05,
        "input": {"batch_size": 128, "augment": "none", "prefetch": 2}, "epochs": 10, "device": "cpu",
        "eval_every": 0, "eval_every_s": 2.0, "checkpoint_every": 500, "log_every": 50}
STALENESS = {"traditional": None, "sb": 1, "stale-sb": 3}


def method_cfg(method: str, seed: int, args) -> dict:
    cfg = {**BASE, "seed": seed, "channels_last": args.channels_last,
           "input": {**BASE["input"], "prefetch": args.prefetch}}
    if STALENESS[method]:
        cfg["methods"] = {"sb": {"beta": args.beta, "window": args.window, "selection_mode": "eval",
                                 "selection_batch_size": args.selection_batch_size,
                                 "selection_precision": args.precision, "selection_fold": args.fold,
                                 "staleness": STALENESS[method]}}
        cfg["label"] = method
    return cfg


# --------------------------------------------------------------------------- the hand-written loop
class Evaluator:
    """Test error every ``every_s`` seconds of training (the clock stops while it evaluates)."""

    def __init__(self, x_test, y_test, every_s: float):
        self.x, self.y, self.every_s = x_test, y_test, every_s
        self.train_s, self.last, self.curve = 0.0, 0.0, []

    @torch.inference_mode()
    def point(self, model, seen: int, selected: int) -> None:
        model.eval()
        wrong, loss = 0, 0.0
        for i in range(0, len(self.y), 1000):
            out = model(self.x[i:i + 1000])
            wrong += int((out.argmax(1) != self.y[i:i + 1000]).sum())
            loss += float(F.cross_entropy(out, self.y[i:i + 1000], reduction="sum"))
        model.train()
        self.curve.append({"wall_s": round(self.train_s, 4), "test_error": wrong / len(self.y),
                           "test_loss": loss / len(self.y), "examples_seen": seen,
                           "sb/selection_forwarded": selected})
        self.last = self.train_s


def loop_run(method: str, seed: int, x_all, y_all, x_test, y_test, cfg_dict: dict, args) -> dict:
    """The minimal loop: Traditional, or SB / Stale-SB written inline."""
    cfg = train_config(cfg_dict, "train")
    torch.manual_seed(seed)
    model = build_model(cfg.model, ImageSpec((1, 28, 28)), 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    staleness = STALENESS[method]
    n, bs, epochs = len(y_all), cfg.input.batch_size, cfg.epochs
    rng = np.random.default_rng(seed)
    window, wcount = np.zeros(args.window), 0
    table = torch.full((n,), float("nan"))
    ev = Evaluator(x_test, y_test, cfg.eval_every_s)
    seen = selected = 0
    sel_s = 0.0
    pending: list = []
    model.train()

    def train(idx: torch.Tensor, progress: float) -> None:
        nonlocal seen
        x = x_all[idx]
        loss = F.cross_entropy(model(x), y_all[idx], reduction="none")
        if staleness:
            table[idx] = loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, cfg)
        opt.step()
        seen += len(idx)

    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n)
        nb = math.ceil(n / bs)
        fresh = staleness is not None and epoch % staleness == 0
        for i in range(nb):
            idx = perm[i * bs:(i + 1) * bs]
            progress = (epoch + (i + 1) / nb) / epochs
            if staleness is None:
                train(idx, progress)
            else:
                losses = table[idx]
                rows = torch.arange(len(idx)) if fresh else torch.nonzero(torch.isnan(losses)).flatten()
                if len(rows):
                    s0 = time.perf_counter()
                    model.eval()
                    with torch.inference_mode():
                        fwd = F.cross_entropy(model(x_all[idx[rows]]), y_all[idx[rows]], reduction="none")
                    model.train()
                    losses[rows] = fwd
                    table[idx[rows]] = fwd
                    selected += len(rows)
                    sel_s += time.perf_counter() - s0
                lv = losses.numpy().astype(np.float64)
                pos = (wcount + np.arange(len(lv))) % args.window
                window[pos] = lv
                wcount += len(lv)
                srt = np.sort(window[:min(wcount, args.window)])
                p = (np.searchsorted(srt, lv, side="right") / len(srt)) ** args.beta
                pending.extend(idx[torch.from_numpy(rng.random(len(p)) < p)].tolist())
                while len(pending) >= bs:
                    train(torch.tensor(pending[:bs]), progress)
                    del pending[:bs]
                if i == nb - 1 and pending:  # the epoch's leftover kept rows: one smaller batch
                    train(torch.tensor(pending), progress)
                    pending = []
            now = time.perf_counter()
            ev.train_s += now - t0
            if ev.train_s - ev.last >= ev.every_s:
                ev.point(model, seen, selected)
            t0 = time.perf_counter()
    ev.point(model, seen, selected)
    return {"curve": ev.curve, "train_s": ev.train_s, "final_test_error": ev.curve[-1]["test_error"],
            "examples_backpropagated": seen, "selection_forwarded": selected, "selection_s": sel_s}


# --------------------------------------------------------------------------- selectkit
def selectkit_run(store: Store, cfg_dict: dict, tmp: str) -> dict:
    cfg = train_config(cfg_dict, "train")
    tracking = TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", experiment="vs-loop")
    ckpt = Path(tmp) / "run.ckpt"
    ckpt.unlink(missing_ok=True)
    t0 = time.perf_counter()
    trainer = Trainer(store, cfg, checkpoint_path=ckpt)  # the auto settings are measured here
    setup_s = time.perf_counter() - t0
    tracker = Tracker(tracking, stage="train", run_name=f"{cfg.label}-{cfg.seed}")
    trainer.tracker = tracker
    with tracker.run({"train": {"seed": cfg.seed}}):
        r = trainer.fit()
    m = r.metrics
    c = m["counters"]
    curve = [{**row, "sb/selection_forwarded": row.get("sb/selection_forwarded", 0.0)} for row in r.curve]
    return {"curve": curve, "train_s": m["train_s"], "final_test_error": m["final_test_error"],
            "examples_backpropagated": m["examples_backpropagated"],
            "selection_forwarded": c.get("sb/selection_forwarded", 0.0), "selection_s": c.get("sb/selection_s", 0.0),
            "node_s": c.get("sb/node_s", 0.0), "seconds": m["seconds"], "selection": m["selection"],
            "channels_last": m["channels_last"], "prefetch": m.get("prefetch"), "autotune": m.get("autotune"),
            "setup_s": setup_s}


# --------------------------------------------------------------------------- the tables
def fmt_s(values):
    vals = [v for v in values if v is not None]
    if len(vals) < len(values):
        return f"not reached in {len(values) - len(vals)} of {len(values)}" + (
            f" (median of the rest {statistics.median(vals):.1f} s)" if vals else "")
    return f"{statistics.median(vals):.1f} s"


def summarise(runs: list, costs: dict, targets=(1.1, 1.2), folded_costs: dict | None = None) -> tuple:
    base = statistics.mean(r["final_test_error"] for r in runs if r["method"] == "traditional")
    out, lines = {"baseline_error": base, "rows": []}, []
    lines.append(f"Targets: {' / '.join(f'{t}x' for t in targets)} of Traditional's mean final error over both "
                 f"sides and all seeds ({100 * base:.2f} %).\n")
    lines.append("| method | side | final error | " + " | ".join(f"time to {t}x (speedup; modelled)" for t in targets)
                 + " | training time | selection µs / candidate | node share |")
    lines.append("|---|---|---|" + "---|" * len(targets) + "---|---|---|")
    trad = {}
    for method in STALENESS:
        for side in ("selectkit", "loop"):
            rs = [r for r in runs if r["method"] == method and r["side"] == side]
            if not rs:
                continue
            row = {"method": method, "side": side, "final_error": [r["final_test_error"] for r in rs],
                   "train_s": [r["train_s"] for r in rs]}
            cells = []
            for t in targets:
                tt = [time_to_error(r["curve"], t * base) for r in rs]
                mod = []
                for r in rs:
                    hit = next((x for x in r["curve"] if x["test_error"] <= t * base), None)
                    # selectkit's runs whose selection ran BatchNorm-folded: modelled with that forward
                    c = folded_costs if folded_costs and r.get("selection", {}).get("fold") else costs
                    mod.append(modelled_seconds(hit, c) if hit else None)
                row[f"time_to_{t}"], row[f"modelled_to_{t}"] = tt, mod
                med = statistics.median([v for v in tt if v is not None]) if any(v is not None for v in tt) else None
                mmed = statistics.median([v for v in mod if v is not None]) if any(v is not None for v in mod) else None
                if method == "traditional":
                    trad[(side, t)] = (med, mmed)
                b, bm = trad.get((side, t), (None, None))
                sp = f"{b / med:.2f}x" if (b and med and None not in tt) else "—"
                spm = f"{bm / mmed:.2f}x" if (bm and mmed and None not in mod) else "—"
                row[f"speedup_{t}"], row[f"modelled_speedup_{t}"] = sp, spm
                cells.append(f"{fmt_s(tt)} ({sp}; {spm})")
            sel = [1e6 * r["selection_s"] / r["selection_forwarded"] for r in rs if r["selection_forwarded"]]
            node = [r["node_s"] / r["train_s"] for r in rs if r.get("node_s")]
            row["selection_us"], row["node_share"] = sel, node
            out["rows"].append(row)
            lines.append(f"| {method} | {side} | {100 * statistics.mean(row['final_error']):.2f} % | "
                         + " | ".join(cells) + f" | {statistics.median(row['train_s']):.1f} s | "
                         + (f"{statistics.median(sel):.1f}" if sel else "—") + " | "
                         + (f"{100 * statistics.median(node):.1f} %" if node else "—") + " |")
    # side by side: selectkit's time over the loop's, per method (the goal: within 5 %)
    lines.append("\n| method | selectkit / loop, time to 1.1x (median over seeds) | training time |")
    lines.append("|---|---|---|")
    for method in STALENESS:
        by = {r["side"]: r for r in out["rows"] if r["method"] == method}
        if len(by) < 2:
            continue
        tt = [statistics.median([v for v in by[s]["time_to_1.1"] if v is not None] or [float("nan")])
              for s in ("selectkit", "loop")]
        tr = [statistics.median(by[s]["train_s"]) for s in ("selectkit", "loop")]
        lines.append(f"| {method} | {tt[0] / tt[1]:.3f} | {tr[0] / tr[1]:.3f} |")
    return out, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="pipelines/online-fashion-mnist/data/store")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(STALENESS), choices=list(STALENESS))
    ap.add_argument("--sides", nargs="+", default=["selectkit", "loop"], choices=["selectkit", "loop"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--precision", default="auto", help="selectkit's selection_precision (the loop: fp32)")
    ap.add_argument("--fold", default="auto", help="selectkit's selection_fold: true | false | auto (the loop: live)")
    ap.add_argument("--channels-last", default="auto", help="selectkit's channels_last: true | false | auto")
    ap.add_argument("--selection-batch-size", default="auto", help="selectkit's SB selection_batch_size (or auto)")
    ap.add_argument("--prefetch", default="auto", help="selectkit's input.prefetch (or auto)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/vs_loop")
    args = ap.parse_args()
    args.channels_last = {"true": True, "false": False}.get(args.channels_last, args.channels_last)
    args.fold = {"true": True, "false": False}.get(args.fold, args.fold)
    if args.selection_batch_size != "auto":
        args.selection_batch_size = int(args.selection_batch_size)
    if args.prefetch != "auto":
        args.prefetch = int(args.prefetch)
    BASE["epochs"] = args.epochs
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    task = task_for(store, channels_last=True, batch_size=128)
    ids = candidate_ids(task, None, "train")  # the train split less the store's holdout, as selectkit trains
    mean, std = store.meta["mean"][0], store.meta["std"][0]

    def tensor(x):
        return ((torch.from_numpy(np.asarray(x)).float().div_(255) - mean) / std).reshape(-1, 1, 28, 28) \
            .contiguous(memory_format=torch.channels_last)
    x_all, y_all = tensor(np.asarray(store.train.x)[ids]), torch.from_numpy(np.asarray(store.train.y)[ids]).long()
    x_test, y_test = tensor(store.test.x), torch.from_numpy(np.asarray(store.test.y)).long()
    tmp = tempfile.mkdtemp(prefix="selectkit-vs-loop-")
    runs = []
    for i, (seed, method) in enumerate((s, m) for s in args.seeds for m in args.methods):
        sides = args.sides if i % 2 == 0 else args.sides[::-1]  # who goes first alternates
        for side in sides:
            cfg = method_cfg(method, seed, args)
            r = (selectkit_run(store, cfg, tmp) if side == "selectkit"
                 else loop_run(method, seed, x_all, y_all, x_test, y_test, cfg, args))
            r.update(method=method, side=side, seed=seed)
            runs.append(r)
            print(f"seed {seed} {method:12s} {side:9s} final {100 * r['final_test_error']:.2f} %  "
                  f"train {r['train_s']:.1f} s  backprop {r['examples_backpropagated']}  "
                  f"selection {r['selection_forwarded']:.0f} in {r['selection_s']:.1f} s"
                  + (f"  node {r['node_s']:.2f} s" if r.get("node_s") else "")
                  + (f"  setup {r['setup_s']:.2f} s" if "setup_s" in r else "")
                  + ("  auto: " + ", ".join(f"{k}={v['choice']}" for k, v in (r.get("autotune") or {}).items())),
                  flush=True)
    costs = measure_costs(ModelConfig("cnn", {"channels": [32, 64]}), "image_classification", {"shape": [1, 28, 28]},
                          10, 128, 128, reps=60)
    folded = measure_costs(ModelConfig("cnn", {"channels": [32, 64]}), "image_classification", {"shape": [1, 28, 28]},
                           10, 128, 128, reps=60, selection_fold=True)
    # the same train step for both (measured once): only the selection forward differs
    folded["train_per_example_s"] = costs["train_per_example_s"]
    folded["ratio"] = costs["train_per_example_s"] / folded["forward_per_example_s"]
    if any(r["method"] == "traditional" for r in runs):
        summary, table = summarise(runs, costs, folded_costs=folded)
    else:  # the targets are multiples of Traditional's final error: the per-run lines above only
        summary, table = None, "No targets or speedups: --methods without traditional (its final error sets them).\n"
    head = (f"CPU: {cpu_name()}, torch {torch.__version__}, {args.threads} threads; seeds {args.seeds}; "
            f"per-example costs measured here: train step {1e6 * costs['train_per_example_s']:.1f} µs, "
            f"fp32 selection forward {1e6 * costs['forward_per_example_s']:.1f} µs (r = {costs['ratio']:.2f}), "
            f"BatchNorm-folded {1e6 * folded['forward_per_example_s']:.1f} µs "
            f"(r = {folded['train_per_example_s'] / folded['forward_per_example_s']:.2f})\n\n")
    print("\n" + head + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "args": vars(args),
                                                    "costs": costs, "folded_costs": folded, "summary": summary, "runs": runs}, indent=1))
    out.with_suffix(".md").write_text(head + table)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    main()
