"""DVC stage `prepare`: turn the configured source into an example store."""

import argparse
import logging

from selectkit.config import DataConfig, TrackingConfig, load_section, to_dict
from selectkit.store import prepare
from selectkit.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="store directory to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_section(args.params, "data", DataConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    tracker = Tracker(tracking, stage="prepare")
    with tracker.run({"data": to_dict(cfg)}) as t:
        meta = prepare(cfg, args.out)
        t.finish({"train_size": meta["splits"]["train"]["size"], "test_size": meta["splits"]["test"]["size"],
                  "num_classes": meta["num_classes"]})
        if t.run_id is not None:  # the main process's MLflow run
            import mlflow

            mlflow.set_tag("selectkit.store_fingerprint", meta["fingerprint"])
            mlflow.log_dict(meta, "meta.json")


if __name__ == "__main__":
    main()
