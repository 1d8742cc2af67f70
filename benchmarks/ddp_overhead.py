"""Several processes against one on the same cores: what DistributedDataParallel and selectkit's
per-step agreement cost, and whether the error changes.

Runs the train stage (``stages/train.py``, as DVC does) with the online pipeline's params for
each method, as 1 process x T threads and as P processes x T/P threads, interleaved, and prints
per-epoch training time, final test error and the time split of the agreement (``sync``: the
all-gather of flags and losses, waiting for the slower rank included; ``idle``: zero-weight
steps of a rank whose shard ran out). On one machine no speedup is expected: the figure is the
overhead, and the correctness of the error.

    python benchmarks/ddp_overhead.py --store pipelines/online-fashion-mnist/data/store --epochs 3

Input batch size is per process, so P processes take P times the global batch of one: the
comparison at the same global batch halves it per process (``--same-global-batch``, default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(params: dict, method: str, store: str, work: Path, name: str) -> dict:
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump(params))
    out = work / name
    cmd = [sys.executable, str(ROOT / "stages/train.py"), "--params", str(p), "--method", method, "--store", store,
           "--out", str(out), "--checkpoint", str(work / f"{name}.pt"), "--resume", "never"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    return json.loads((out / "run.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--params", default=str(ROOT / "pipelines/online-fashion-mnist/params.yaml"))
    ap.add_argument("--methods", nargs="+", default=["traditional", "sb"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the one process (split among P)")
    ap.add_argument("--selection-precision", default="fp32")
    ap.add_argument("--no-same-global-batch", dest="same_global", action="store_false")
    args = ap.parse_args()

    from selectkit.machine import cpu_name

    base = yaml.safe_load(Path(args.params).read_text())
    layouts = [(1, args.threads), (args.processes, max(1, args.threads // args.processes))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="selectkit-ddp-") as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            for method in args.methods:
                for procs, threads in layouts:  # interleaved: the two layouts of one run side by side
                    params = {"train": dict(base["train"]), "method": base["method"],
                              "tracking": {"experiment": "ddp-overhead", "log_model": False}}
                    t = params["train"]
                    batch = t["input"]["batch_size"]
                    t.update(epochs=args.epochs, seed=seed, threads=threads, processes=procs, eval_every=0,
                             eval_every_s=0.0, checkpoint_every=0,
                             input={**t["input"], "batch_size": batch // procs if args.same_global else batch})
                    for m in params["method"].values():
                        if "sb" in m.get("methods", {}):
                            m["methods"]["sb"]["selection_precision"] = args.selection_precision
                    name = f"{method}-{procs}x{threads}-{seed}"
                    r = run(params, method, args.store, work, name)
                    sec = r["seconds"]
                    rows.append({"method": method, "layout": f"{procs} x {threads}", "seed": seed,
                                 "epoch_s": r["train_s"] / r["epochs"], "error": r["final_test_error"],
                                 "sync": sec.get("sync", 0.0) / r["train_s"], "idle": sec.get("idle", 0.0) / r["train_s"],
                                 "idle_steps": sum(x["idle_steps"] for x in r.get("ranks", [])),
                                 "steps": r["steps"], "kept": r["kept_fraction"]})
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{cpu_name()}, torch threads per process as shown, {args.epochs} epochs, "
          f"seeds {args.seeds}, global batch {'the same' if args.same_global else 'x processes'}\n")
    print("| method | processes x threads | s per epoch | final error | sync | idle (steps) | kept |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        for procs, threads in layouts:
            rs = [r for r in rows if r["method"] == method and r["layout"] == f"{procs} x {threads}"]
            print(f"| {method} | {procs} x {threads} | {statistics.median(r['epoch_s'] for r in rs):.2f} | "
                  f"{100 * statistics.mean(r['error'] for r in rs):.2f} % | "
                  f"{100 * statistics.mean(r['sync'] for r in rs):.1f} % | "
                  f"{100 * statistics.mean(r['idle'] for r in rs):.1f} % ({sum(r['idle_steps'] for r in rs)}) | "
                  f"{statistics.mean(r['kept'] for r in rs):.3f} |")


if __name__ == "__main__":
    main()
