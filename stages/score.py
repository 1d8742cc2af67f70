"""DVC stage `score` (SVP): run one trained proxy over the store and write per-example scores.

With ``score.processes`` > 1 the stage launches itself under torchrun: each process scores
every N-th batch, the scores are gathered by example id (equal to one process's), rank 0 writes.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import TrackingConfig, load_section, to_dict
from selectkit.io import check_writable


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--store", required=True)
    ap.add_argument("--proxy", required=True, help="the proxy's training run directory (model.pt, run.json)")
    ap.add_argument("--out", required=True, help="scores directory to write")
    return ap


def validate(args: argparse.Namespace):
    """params' `score` and `tracking`, and that --out can be written."""
    from selectkit.methods.svp.config import ScoreConfig

    cfg = load_section(args.params, "score", ScoreConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    check_writable(args.out, "--out", "pass a scores directory you can write")
    return cfg, tracking


def main(argv: Optional[List[str]] = None) -> None:
    from selectkit import dist
    from selectkit.io import load_model
    from selectkit.methods.svp.artifacts import score_store, write_scores
    from selectkit.store import Store
    from selectkit.tasks import task_for
    from selectkit.tracking import Tracker
    from selectkit.train import resolve_device

    args = parser().parse_args(argv)
    cfg, tracking = validate(args)
    if cfg.processes > 1 and not dist.launched():
        from selectkit.launch import torchrun

        torchrun(cfg.processes, __file__, sys.argv[1:] if argv is None else argv)
        return
    store = Store(args.store)
    run = Path(args.proxy)
    task = task_for(store, channels_last=cfg.channels_last)
    device = resolve_device(cfg.device)
    dist.init(device.type)
    model, saved = load_model(run, task, device)
    device = next(model.parameters()).device
    proxy_run = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    with Tracker(tracking, stage="score").run({"score": to_dict(cfg), "proxy": str(run)}) as t:
        t0 = time.perf_counter()
        scores = score_store(model, task, device, cfg.batch_size, source=f"proxy run {run}",
                             embeddings=cfg.embeddings, rank=dist.rank(), world_size=dist.world_size())
        seconds = time.perf_counter() - t0
        if not dist.is_main_process():  # every rank holds the gathered scores; rank 0 writes
            return
        write_scores(args.out, scores, {
            "proxy_run": str(run), "model": saved["model_sig"], "store_fingerprint": store.fingerprint,
            "proxy_config": saved.get("config"), "proxy_train_s": proxy_run.get("train_s"),
            "proxy_final_test_error": proxy_run.get("final_test_error"), "score_s": seconds})
        t.finish({"score_s": seconds, "examples": int(len(scores["ids"]))})


if __name__ == "__main__":
    run_stage(main)
