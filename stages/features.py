"""DVC stage `features` (AutoAssist): cheap per-example features of the store's train split,
computed once and read memory-mapped by the gate (``train.methods.autoassist.features``): the
task's own (images: pooled pixels; text: TF-IDF reduced to --components by a truncated SVD), or
with --from-scores a proxy's cached penultimate embeddings."""

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
    ap.add_argument("--from-scores", default=None, metavar="DIR",
                    help="use the embeddings in this scores directory (stages/score.py with score.embeddings: true)")
    ap.add_argument("--components", type=int, default=64,
                    help="principal components kept of a proxy's embeddings (--from-scores; 0 keeps every column), "
                         "or SVD components of a text store's TF-IDF")
    ap.add_argument("--no-uncertainty", action="store_true",
                    help="with --from-scores: the embeddings only, without the proxy's uncertainty scores first")
    return ap


def validate(args: argparse.Namespace) -> TrackingConfig:
    """params' `tracking`, --downsample, and that --out can be written."""
    from selectkit.validation import UsageError

    if args.downsample < 1:
        raise UsageError(f"--downsample {args.downsample} must be >= 1 (1 keeps every pixel)")
    if args.components < 0:
        raise UsageError(f"--components {args.components} must be >= 1, or 0 to keep every embedding column")
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
    with Tracker(tracking, stage="features").run({"features": {"task": task.name, "downsample": args.downsample,
                                                               "from_scores": args.from_scores}}) as t:
        t0 = time.perf_counter()
        if args.from_scores:
            from selectkit.methods.autoassist.features import embedding_features

            feats, meta = embedding_features(args.from_scores, task, args.components or None,
                                             uncertainty=not args.no_uncertainty)
        elif task.name == "text_classification":
            if args.components == 0:
                from selectkit.validation import UsageError

                raise UsageError("--components 0 keeps every column of a proxy's embeddings; a text store's TF-IDF "
                                 "has one column per word: pass a number of SVD components (e.g. 64)")
            feats = task.features(components=args.components)
            meta = {"kind": "tf-idf", "components": int(feats.shape[1])}
        else:
            feats = task.features(downsample=args.downsample)
            meta = {"kind": f"{task.name} features", "downsample": args.downsample}
        # this stage's seconds, beside any proxy's: what a run on these features cost upstream
        write_features(args.out, feats, {"store_fingerprint": store.fingerprint, **meta,
                                         "features_s": time.perf_counter() - t0})
        t.finish({"features_s": time.perf_counter() - t0, "rows": feats.shape[0], "dim": feats.shape[1]})


if __name__ == "__main__":
    run_stage(main)
