"""What the AutoAssist assistant costs the boss, by worker kind: thread, process, inline.

Every configuration trains the same model on the same store for one epoch with the gate in
*shadow* mode (the assistant learns from every published batch and the gate decides, but
everything passes), so each does identical training work; the baseline runs without the gate.
Rounds interleave the configurations; the figure is the median over rounds of the step time
(training wall-clock per step) relative to the baseline in the same round.

    python benchmarks/autoassist_worker.py --store data/store --rounds 3
"""

import argparse
import json
import statistics

from selectkit.config import train_config
from selectkit.store import Store
from selectkit.train import Trainer


def run(store, worker, epochs, threads):
    methods = {} if worker == "none" else {"autoassist": {"worker": worker, "shadow": True}}
    cfg = train_config({"model": {"name": "cnn", "args": {"channels": [32, 64]}}, "epochs": epochs,
                        "input": {"batch_size": 128, "prefetch": 2}, "eval_every": 0,
                        "checkpoint_every": 0, "threads": threads, "methods": methods})
    m = Trainer(store, cfg).fit().metrics
    c = m["counters"]
    return {"step_ms": 1000 * m["train_s"] / m["steps"], "publish_ms": 1000 * c.get("aa/publish_s", 0) / m["steps"],
            "update_ms": 1000 * c.get("aa/update_s", 0) / max(c.get("aa/updates", 0), 1),
            "dropped": c.get("aa/dropped", 0), "updates": c.get("aa/updates", 0), "steps": m["steps"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="data/store")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    store = Store(args.store)
    kinds = ["none", "thread", "process", "inline"]
    res = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds:
            res[k].append(run(store, k, args.epochs, args.threads))
            print(r, k, json.dumps({a: round(b, 3) for a, b in res[k][-1].items()}), flush=True)
    print("\n| worker | step ms (median) | ratio to no gate (median of rounds) | boss publish ms/step | "
          "assistant update ms/batch | dropped/published |")
    print("|---|---|---|---|---|---|")
    for k in kinds:
        ratios = [a["step_ms"] / b["step_ms"] for a, b in zip(res[k], res["none"])]
        med = lambda key: statistics.median(x[key] for x in res[k])  # noqa: E731
        print(f"| {k} | {med('step_ms'):.2f} | {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
              f"{max(ratios):.3f}) | {med('publish_ms'):.3f} | {med('update_ms'):.3f} | "
              f"{med('dropped'):.0f}/{med('steps'):.0f} |")


if __name__ == "__main__":
    main()
