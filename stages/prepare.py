"""DVC stage `prepare`: turn the configured source into an example store."""

import argparse
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import DataConfig, TrackingConfig, load_section, to_dict
from selectkit.io import check_writable


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="store directory to write")
    return ap


def validate(args: argparse.Namespace):
    """params' `data` and `tracking`, the source's path, and that --out can be written."""
    from selectkit.store.sources import check_source

    cfg = load_section(args.params, "data", DataConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    check_source(cfg)
    check_writable(args.out, "--out", "pass a store directory you can write")
    return cfg, tracking


def main(argv: Optional[List[str]] = None) -> None:
    from selectkit.store import prepare
    from selectkit.tracking import Tracker

    args = parser().parse_args(argv)
    cfg, tracking = validate(args)
    with Tracker(tracking, stage="prepare").run({"data": to_dict(cfg)}) as t:
        meta = prepare(cfg, args.out)
        t.finish({"train_size": meta["splits"]["train"]["size"], "test_size": meta["splits"]["test"]["size"],
                  "num_classes": meta["num_classes"]})
        if t.run_id is not None:  # the main process's MLflow run
            import mlflow

            mlflow.set_tag("selectkit.store_fingerprint", meta["fingerprint"])
            mlflow.log_dict(meta, "meta.json")


if __name__ == "__main__":
    run_stage(main)
