"""DVC stage `train`: train one model through the input graph its params describe.

Writes ``<out>/model.pt``, ``<out>/metrics.json`` (the handful of figures DVC shows),
``<out>/run.json`` (every figure: counters, time split, costs' inputs) and ``<out>/curve.csv``
(DVC plots), each atomically and only once training has finished. Checkpoints go to
``--checkpoint`` (outside DVC's outputs, so DVC does not delete them before a rerun); an
interrupted run resumes from there, in the same MLflow run, when rerun with the same params.
Every argument, params section and path is checked before training starts (``validate``,
which the pipeline's `check` stage also runs before DVC deletes any output).

With ``train.processes`` > 1 the stage launches itself as that many processes under torchrun
(DistributedDataParallel; see selectkit/train.py) after the checks; started by ``torchrun``
itself it is one of them. Either way only rank 0 writes and tracks.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import TrackingConfig, load_section, load_train_config, to_dict
from selectkit.io import atomic_write_text, check_writable, save_model


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--resume", default="auto",
                    help="auto (continue this run's unfinished checkpoint), never, or a checkpoint path")
    return ap


def checkpoint_path(args: argparse.Namespace) -> Path:
    return Path(args.checkpoint or Path(".selectkit/checkpoints") / f"{Path(args.out).name}.pt")


def validate(args: argparse.Namespace):
    """Everything that can be checked without training: params sections, and that the run
    directory and the checkpoint can be written. Returns (TrainConfig, TrackingConfig)."""
    cfg = load_train_config(args.params, args.section, args.method, args.merge, seed=args.seed,
                            input={"subset": args.subset} if args.subset else None, label=args.label)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    check_writable(args.out, "--out", "pass a run directory you can write")
    check_writable(checkpoint_path(args), "--checkpoint",
                   "pass --checkpoint <a writable file>, or run from a directory you can write "
                   "(checkpoints default to .selectkit/checkpoints/ there)", kind="file")
    return cfg, tracking


def main(argv: Optional[List[str]] = None) -> None:
    args = parser().parse_args(argv)
    cfg, tracking = validate(args)

    from selectkit import dist
    from selectkit.preflight import check_tracking

    if dist.is_main_process():  # seconds, not minutes of retries, before the data is even loaded
        check_tracking(tracking)
    if cfg.processes > 1 and not dist.launched():
        from selectkit.launch import torchrun

        torchrun(cfg.processes, __file__, sys.argv[1:] if argv is None else argv,
                 hint=f"the last checkpoint ({checkpoint_path(args)}) resumes when the stage is rerun",
                 shutdown_timeout=cfg.dist_timeout_s)
        return

    from selectkit.store import Store
    from selectkit.tracking import Tracker
    from selectkit.train import Trainer, headline

    store = Store(args.store)
    out = Path(args.out)
    trainer = Trainer(store, cfg, checkpoint_path=checkpoint_path(args))
    resume = None if args.resume == "never" else args.resume
    source = trainer.resume_source(resume)  # a bad --resume fails here, before MLflow or training
    tracker = trainer.tracker = Tracker(tracking, stage="train")
    tags = {"selectkit.label": cfg.label, "selectkit.store_fingerprint": store.fingerprint}
    with tracker.run({args.section: to_dict(cfg)}, tags=tags,
                     resume_run_id=(source or {}).get("tracking_run_id")) as t:
        result = trainer.fit(resume=resume, complete=False)  # finished only once the outputs are written
        if not dist.is_main_process():  # rank 0 writes the outputs and the MLflow run
            trainer.mark_complete()
            return
        save_model(out / "model.pt", result.model, model_sig=trainer.model_sig, task=trainer.task,
                   config=to_dict(cfg))
        atomic_write_text(out / "run.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
        t.finish(result.metrics, curve=result.curve, curve_path=out / "curve.csv")
        atomic_write_text(out / "metrics.json", json.dumps(headline(result.metrics), indent=2) + "\n")
        if tracking.log_model:
            t.log_model(result.model, registered_model_name=tracking.registered_model)
    trainer.mark_complete()  # a failure above leaves the checkpoint resumable: the rerun only writes
    m = result.metrics
    print(f"{cfg.label} seed {cfg.seed}: final test error {100 * m['final_test_error']:.2f} % after "
          f"{m['train_s']:.1f} s of training ({m['epochs']} epochs, {m['examples_backpropagated']} examples "
          f"backpropagated); wrote {out}/", flush=True)


if __name__ == "__main__":
    run_stage(main)
