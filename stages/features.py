"""DVC stage `features` (AutoAssist): the task's cheap per-example features of the store's train
split, computed once and read memory-mapped by the gate (``train.methods.autoassist.features``)."""

import argparse
import time
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import TrackingConfig, load_section
from selectkit.io import check_writable


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True, help="features directory to write")
    ap.add_argument("--downsample", type=int, default=2, help="average-pooling factor of the pixels")
    return ap


def validate(args: argparse.Namespace) -> TrackingConfig:
    """params' `tracking`, --downsample, and that --out can be written."""
    from selectkit.validation import UsageError

    if args.downsample < 1:
        raise UsageError(f"--downsample {args.downsample} must be >= 1 (1 keeps every pixel)")
    check_writable(args.out, "--out", "pass a features directory you can write")
    return load_section(args.params, "tracking", TrackingConfig)


def main(argv: Optional[List[str]] = None) -> None:
    from selectkit.methods.autoassist.features import write_features
    from selectkit.store import Store
    from selectkit.tasks import task_for
    from selectkit.tracking import Tracker

    args = parser().parse_args(argv)
    tracking = validate(args)
    store = Store(args.store)
    task = task_for(store)
    with Tracker(tracking, stage="features").run({"features": {"task": task.name,
                                                               "downsample": args.downsample}}) as t:
        t0 = time.perf_counter()
        feats = task.features(downsample=args.downsample)
        write_features(args.out, feats, {"store_fingerprint": store.fingerprint, "kind": f"{task.name} features",
                                         "downsample": args.downsample})
        t.finish({"features_s": time.perf_counter() - t0, "rows": feats.shape[0], "dim": feats.shape[1]})


if __name__ == "__main__":
    run_stage(main)
