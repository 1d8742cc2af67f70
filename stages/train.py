"""DVC stage `train`: train one model through the input graph its params describe.

Writes ``<out>/model.pt``, ``<out>/curve.csv`` (DVC plots) and ``<out>/metrics.json``
(DVC metrics), each atomically and only once training has finished. Checkpoints go to
``--checkpoint`` (outside DVC's outputs, so DVC does not delete them before a rerun); an
interrupted run resumes from there when rerun with the same params.
"""

import argparse
import logging
import sys
from pathlib import Path

from selectkit.config import TrackingConfig, load_section, load_train_config, to_dict
from selectkit.io import save_model
from selectkit.store import Store
from selectkit.tracking import Tracker
from selectkit.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--section", default="train", help="params section holding this run's TrainConfig")
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True, help="run directory to write")
    ap.add_argument("--method", default=None, help="merge params' method.<NAME> over the section")
    ap.add_argument("--merge", action="append", default=[], metavar="KEY",
                    help="merge the dotted params KEY (e.g. proxy_models.mlp) over the section; repeatable")
    ap.add_argument("--seed", type=int, default=None, help="overrides the section's seed")
    ap.add_argument("--subset", default=None, help="overrides input.subset (an SVP subset directory)")
    ap.add_argument("--label", default=None, help="overrides the run's label in reports")
    ap.add_argument("--checkpoint", default=None, help="default: .selectkit/checkpoints/<out name>.pt")
    ap.add_argument("--resume", default="auto", help="auto, never, or a checkpoint path")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.params, args.section, args.method, args.merge, seed=args.seed,
                            input={"subset": args.subset} if args.subset else None, label=args.label)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    store = Store(args.store)
    out = Path(args.out)
    ckpt = Path(args.checkpoint or Path(".selectkit/checkpoints") / f"{out.name}.pt")
    trainer = Trainer(store, cfg, checkpoint_path=ckpt)
    tracker = Tracker(tracking, stage="train")
    trainer.tracker = tracker
    tags = {"selectkit.label": cfg.label, "selectkit.store_fingerprint": store.fingerprint}
    try:
        with tracker.run({args.section: to_dict(cfg)}, tags=tags) as t:
            result = trainer.fit(resume=None if args.resume == "never" else args.resume)
            save_model(out / "model.pt", result.model, model_sig=trainer.model_sig, task=trainer.task,
                       config=to_dict(cfg))
            t.finish(result.metrics, metrics_path=out / "metrics.json", curve=result.curve,
                     curve_path=out / "curve.csv")
    except KeyboardInterrupt as e:
        logging.getLogger("selectkit").error("interrupted: %s", e)
        sys.exit(130)


if __name__ == "__main__":
    main()
