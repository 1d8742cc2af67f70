"""DVC stage `choose` (SVP): turn proxy scores into a subset artifact (never name this select.py:
it would shadow the stdlib `select` module)."""

import argparse
import logging

import numpy as np

from selectkit.config import TrackingConfig, load_params, load_section, to_dict
from selectkit.methods.svp.artifacts import choose_subset, write_subset
from selectkit.methods.svp.config import ChooseConfig
from selectkit.report import expand_runs
from selectkit.store import Store
from selectkit.tracking import Tracker


def main() -> None:
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rule = "random" if args.kind == "random" else args.rule
    cfg = load_section(args.params, "choose", ChooseConfig, fraction=args.fraction, rule=rule)
    scores = [] if args.kind == "random" else expand_runs(args.scores, load_params(args.params))
    tracking = load_section(args.params, "tracking", TrackingConfig)
    store = Store(args.store)
    with Tracker(tracking, stage="choose").run({"choose": to_dict(cfg), "scores": scores}) as t:
        ids, prov = choose_subset(cfg, store, scores)
        meta = write_subset(args.out, ids, prov)
        counts = np.bincount(np.asarray(store.train.y)[ids], minlength=store.num_classes)
        t.finish({"size": meta["size"], **{f"class_{c}": int(v) for c, v in enumerate(counts)}})


if __name__ == "__main__":
    main()
