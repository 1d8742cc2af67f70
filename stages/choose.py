"""DVC stage `choose` (SVP): turn proxy scores into a subset artifact (never name this select.py:
it would shadow the stdlib `select` module)."""

import argparse
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import TrackingConfig, load_params, load_section, to_dict
from selectkit.io import check_writable


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--store", required=True)
    ap.add_argument("--scores", nargs="*", default=[],
                    help="scores directories of the proxies; {proxy_seed} expands over params' proxy_seeds")
    ap.add_argument("--out", required=True, help="subset directory to write")
    ap.add_argument("--fraction", type=float, default=None, help="overrides choose.fraction")
    ap.add_argument("--rule", default=None, help="overrides choose.rule")
    ap.add_argument("--kind", choices=["svp", "random"], default="svp",
                    help="random: the same-size uniform baseline (rule random, scores ignored)")
    return ap


def validate(args: argparse.Namespace):
    """params' `choose` (with this stage's overrides) and `tracking`, the score patterns'
    expansion, and that --out can be written. Returns (ChooseConfig, scores dirs, TrackingConfig)."""
    from selectkit.methods.svp.config import ChooseConfig
    from selectkit.report import expand_runs

    rule = "random" if args.kind == "random" else args.rule
    cfg = load_section(args.params, "choose", ChooseConfig, fraction=args.fraction, rule=rule)
    scores = [] if args.kind == "random" else expand_runs(args.scores, load_params(args.params))
    tracking = load_section(args.params, "tracking", TrackingConfig)
    check_writable(args.out, "--out", "pass a subset directory you can write")
    return cfg, scores, tracking


def main(argv: Optional[List[str]] = None) -> None:
    import numpy as np

    from selectkit.methods.svp.artifacts import choose_subset, write_subset
    from selectkit.store import Store
    from selectkit.tracking import Tracker

    args = parser().parse_args(argv)
    cfg, scores, tracking = validate(args)
    store = Store(args.store)
    with Tracker(tracking, stage="choose").run({"choose": to_dict(cfg), "scores": scores}) as t:
        ids, prov = choose_subset(cfg, store, scores)
        meta = write_subset(args.out, ids, prov)
        counts = np.bincount(np.asarray(store.train.y)[ids], minlength=store.num_classes)
        t.finish({"size": meta["size"], **{f"class_{c}": int(v) for c, v in enumerate(counts)}})


if __name__ == "__main__":
    run_stage(main)
