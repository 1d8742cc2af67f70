"""Benchmark: selectkit against a minimal hand-written PyTorch loop, Traditional / SB / Stale-SB.

Both sides train the same CNN with the same arithmetic (BENCHMARK.md's reference setting: batch
128, SGD nesterov 0.9, wd 5e-4, peak lr 0.1, 5 % warm-up then cosine over 10 epochs of
candidates, no augmentation; SB: beta 2, R 1024, selection forwards in eval mode; Stale-SB: the
same with selection forwards in every third epoch only, the other epochs ranking the losses last
recorded for each example). They differ only in how:

- loop:      the train split as one in-memory tensor (normalised by selectkit's loader), batches
             sliced by hand, SB's window, draws and re-batching written inline, a per-example
             loss table as one tensor; no loader, no tracking, no checkpoints. It draws from
             selectkit's random streams (the epochs' orders, the keep/skip draws, the initial
             weights), and selects on ``--loop-selection-batch-size`` candidates at a time.
- selectkit: the Trainer with its input graph (sampler -> loading from the memory-mapped
             store -> prefetch thread -> SB node -> re-batching), MLflow tracking to a fresh
             SQLite store and checkpoints every 500 steps (the online pipeline's settings);
             ``selection_precision``, ``selection_fold``, ``channels_last``,
             ``selection_batch_size`` and ``input.prefetch`` as given, by default ``auto``
             (measured at the start of each run, in the Trainer's construction: its seconds are
             printed as ``setup``, outside the training clock of both sides).

**Paired** (the way to compare speed): give selectkit the loop's arithmetic, ``--precision fp32
--fold false``, and the same selection batch on both sides (``--selection-batch-size N
--loop-selection-batch-size N``, N what ``auto`` picks on the machine: printed per run). Then
both sides train the same examples in the same steps to the same weights (tests/test_sb.py
checks this recipe against the Trainer bit for bit), every final error and curve is the same
on both sides, and every difference in time is speed. With ``auto`` settings that change the
arithmetic (a folded or bf16 selection forward, another batch) the two sides' draws part
after a few steps, and their curves differ by seed noise, which near a flat target moves
times to it by tens of per cent.

Both evaluate the test split every ``--eval-every`` training steps (the same steps on both
sides; evaluation excluded from the clock; 0: every 2 s of training). Runs are interleaved: for
each seed, every method, the two sides in alternating order. The target of every method is 1.1x
(and 1.2x) Traditional's mean final error over both sides and all seeds, so the two sides' times
compare directly. Beside each measured time: its *modelled* twin (backpropagated examples times
the per-example train-step cost plus selection forwards times the per-example forward cost, both
measured interleaved in this process: ``selectkit.costs``), which carries no machine noise.

    python benchmarks/vs_loop.py --store pipelines/online-fashion-mnist/data/store --seeds 0 1 2 \
        --precision fp32 --fold false --selection-batch-size 128 --loop-selection-batch-size 128 \
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
    cfg = {**BASE, "seed": seed, "channels_last": args.channels_last, "eval_every": args.eval_every,
           "eval_every_s": 0.0 if args.eval_every else BASE["eval_every_s"],
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
    """Test error every ``every_steps`` training steps, or (0) every ``every_s`` seconds of
    training (the clock stops while it evaluates)."""

    def __init__(self, x_test, y_test, every_s: float, every_steps: int = 0):
        self.x, self.y, self.every_s, self.every_steps = x_test, y_test, every_s, every_steps
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
    """The minimal loop: Traditional, or SB / Stale-SB written inline.

    It draws from selectkit's random streams (each epoch's order from ``default_rng([seed,
    epoch])``, the keep/skip draws from ``default_rng([seed, 0x5B])``, the weights from
    ``manual_seed(seed)``) and trains on the same normalised tensors, so with the same arithmetic
    (fp32, selection forwards live, the same selection batch: ``--fold false --precision fp32
    --loop-selection-batch-size`` equal to selectkit's) both sides train the same examples in the
    same order to the same weights, and only their speed differs (tests/test_sb.py checks the
    same recipe bit for bit against the Trainer)."""
    cfg = train_config(cfg_dict, "train")
    torch.manual_seed(seed)
    model = build_model(cfg.model, ImageSpec((1, 28, 28)), 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    staleness = STALENESS[method]
    n, bs, epochs = len(y_all), cfg.input.batch_size, cfg.epochs
    rng = np.random.default_rng([seed, 0x5B])
    window, wcount = np.zeros(args.window), 0
    table = torch.full((n,), float("nan"))
    ev = Evaluator(x_test, y_test, cfg.eval_every_s, cfg.eval_every)
    seen = selected = steps = 0
    sel_s = 0.0
    pending: list = []
    model.train()

    def train(idx: torch.Tensor, progress: float) -> None:
        nonlocal seen, steps, t0
        x = x_all[idx].contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y_all[idx], reduction="none")
        if staleness:
            table[idx] = loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, cfg)
        opt.step()
        seen += len(idx)
        steps += 1
        if ev.every_steps and steps % ev.every_steps == 0:  # at the steps selectkit's Trainer evaluates
            ev.train_s += time.perf_counter() - t0
            ev.point(model, seen, selected)
            t0 = time.perf_counter()

    t0 = time.perf_counter()
    cs = bs if staleness is None else args.loop_selection_batch_size  # candidates per selection batch
    for epoch in range(epochs):
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        nb = math.ceil(n / cs)
        fresh = staleness is not None and epoch % staleness == 0
        for i in range(nb):
            idx = perm[i * cs:(i + 1) * cs]
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
                        xs = x_all[idx[rows]].contiguous(memory_format=torch.channels_last)
                        fwd = F.cross_entropy(model(xs), y_all[idx[rows]], reduction="none")
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
            if not ev.every_steps and ev.train_s - ev.last >= ev.every_s:
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
    # side by side: selectkit's time over the loop's, per method (the goal: within 5 %); the
    # paired columns take the ratio per seed first (the statistic to read in the paired mode,
    # where both sides train the same steps), then its median
    lines.append("\n| method | selectkit / loop: medians of each side, time to 1.1x | training time "
                 "| paired per seed: time to 1.1x | paired per seed: training time |")
    lines.append("|---|---|---|---|---|")

    def paired(v):
        return f"{', '.join(f'{x:.2f}' for x in v)} (median {statistics.median(v):.3f})" if v else "—"
    for method in STALENESS:
        by = {r["side"]: r for r in out["rows"] if r["method"] == method}
        if len(by) < 2:
            continue
        tt = [statistics.median([v for v in by[s]["time_to_1.1"] if v is not None] or [float("nan")])
              for s in ("selectkit", "loop")]
        tr = [statistics.median(by[s]["train_s"]) for s in ("selectkit", "loop")]
        pairs = {}
        for r in runs:
            if r["method"] == method:
                pairs.setdefault(r["seed"], {})[r["side"]] = r
        ratio_t, ratio_tr = [], []
        for pair in pairs.values():
            if len(pair) == 2:
                a, b = (time_to_error(pair[s]["curve"], 1.1 * base) for s in ("selectkit", "loop"))
                if a is not None and b is not None:
                    ratio_t.append(a / b)
                ratio_tr.append(pair["selectkit"]["train_s"] / pair["loop"]["train_s"])
        lines.append(f"| {method} | {tt[0] / tt[1]:.3f} | {tr[0] / tr[1]:.3f} | {paired(ratio_t)} | {paired(ratio_tr)} |")
        out.setdefault("paired", {})[method] = {"time_to_1.1": ratio_t, "train_s": ratio_tr}
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
    ap.add_argument("--loop-selection-batch-size", type=int, default=128,
                    help="the loop's SB candidates per selection forward and window push (default 128, the "
                         "training batch; 512 gives it selectkit's auto choice on CPUs where auto picks 512)")
    ap.add_argument("--eval-every", type=int, default=50,
                    help="both sides evaluate every this many training steps, so with the same arithmetic they "
                         "evaluate the same weights at the same steps and times to a target compare paired "
                         "(0: every 2 s of training instead)")
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
    # the train split as selectkit's loader normalises it (the same float rounding), one tensor
    whole = task.loader()({"ids": np.asarray(ids), "epoch": 0, "index": 0, "num_batches": 1})
    x_all, y_all = whole["x"].contiguous(memory_format=torch.channels_last), whole["y"].long()
    test = task.eval_batches(1000)  # selectkit's evaluation batches
    x_test = torch.cat([b["x"] for b in test]).contiguous(memory_format=torch.channels_last)
    y_test = torch.cat([b["y"] for b in test]).long()
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
