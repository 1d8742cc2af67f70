"""DVC stage `score` (SVP): run one trained proxy over the store and write per-example scores."""

import argparse
import json
import logging
import time
from pathlib import Path

from selectkit.config import TrackingConfig, load_section, to_dict
from selectkit.io import load_model
from selectkit.methods.svp.artifacts import score_store, write_scores
from selectkit.methods.svp.config import ScoreConfig
from selectkit.store import Store
from selectkit.tasks import task_for
from selectkit.tracking import Tracker
from selectkit.train import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--store", required=True)
    ap.add_argument("--proxy", required=True, help="the proxy's training run directory (model.pt, metrics.json)")
    ap.add_argument("--out", required=True, help="scores directory to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_section(args.params, "score", ScoreConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    store = Store(args.store)
    run = Path(args.proxy)
    task = task_for(store, channels_last=cfg.channels_last)
    model, saved = load_model(run, task, resolve_device(cfg.device))
    device = next(model.parameters()).device
    proxy_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    with Tracker(tracking, stage="score").run({"score": to_dict(cfg), "proxy": str(run)}) as t:
        t0 = time.perf_counter()
        scores = score_store(model, task, device, cfg.batch_size, source=f"proxy run {run}",
                             embeddings=cfg.embeddings)
        seconds = time.perf_counter() - t0
        write_scores(args.out, scores, {
            "proxy_run": str(run), "model": saved["model_sig"], "store_fingerprint": store.fingerprint,
            "proxy_config": saved.get("config"), "proxy_train_s": proxy_metrics.get("train_s"),
            "proxy_final_test_error": proxy_metrics.get("final_test_error"), "score_s": seconds})
        t.finish({"score_s": seconds, "examples": int(len(scores["ids"]))})


if __name__ == "__main__":
    main()
