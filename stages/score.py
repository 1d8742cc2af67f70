"""DVC stage `score` (SVP): run one trained proxy over the store and write per-example scores."""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from selectkit.config import ModelConfig, ScoreConfig, TrackingConfig, load_section, to_dict
from selectkit.models import build_model
from selectkit.store import Store
from selectkit.subsets import score_store, write_scores
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
    if not (run / "model.pt").is_file():
        raise FileNotFoundError(f"{run}/model.pt not found: run the proxy's train stage first")
    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    if ckpt["store_fingerprint"] != store.fingerprint:
        raise ValueError(f"proxy {run} was trained on store {ckpt['store_fingerprint']} but the store is "
                         f"{store.fingerprint}: rerun the proxy's train stage on this store")
    device = resolve_device(cfg.device)
    sig = ckpt["model_sig"]
    model = build_model(ModelConfig(sig["name"], sig["args"]), store.image_shape, store.num_classes)
    model.load_state_dict(ckpt["state_dict"])
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    proxy_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    with Tracker(tracking, stage="score").run({"score": to_dict(cfg), "proxy": str(run)}) as t:
        t0 = time.perf_counter()
        scores = score_store(model, store, device, cfg.batch_size, cfg.channels_last, source=f"proxy run {run}",
                             embeddings=cfg.embeddings)
        seconds = time.perf_counter() - t0
        write_scores(args.out, scores, {
            "proxy_run": str(run), "model": sig, "store_fingerprint": store.fingerprint,
            "proxy_config": ckpt.get("config"), "proxy_train_s": proxy_metrics.get("train_s"),
            "proxy_final_test_error": proxy_metrics.get("final_test_error"), "score_s": seconds})
        t.finish({"score_s": seconds, "examples": int(len(scores["ids"]))})


if __name__ == "__main__":
    main()
