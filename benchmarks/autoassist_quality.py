"""How much the trained AutoAssist assistant knows: ranking quality of its g = P(loss > T_k).

Loads a finished AutoAssist run (its model and the assistant in its final checkpoint), scores
every train example with the run's final model, labels z = [loss > T_k] with the assistant's
last threshold, and compares the ROC AUC of:
  - the assistant's g (pixel features + per-class bias, as trained),
  - the class alone (each example scored by its class's share of z = 1: the best any
    class-bias-only assistant could do, measured on these very labels).
The final model's losses stand in for the losses the boss would see next.

    cd pipelines/online-fashion-mnist
    python ../../benchmarks/autoassist_quality.py --run runs/autoassist-0 --checkpoint .selectkit/checkpoints/autoassist-0.pt
"""

import argparse
import json

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from selectkit.checkpoint import read_checkpoint
from selectkit.io import load_model
from selectkit.methods.autoassist.features import read_features
from selectkit.methods.autoassist.functions import snapshot_predict
from selectkit.methods.svp.artifacts import score_store
from selectkit.store import Store
from selectkit.tasks import task_for


def find_assistant(state):
    """The gate's assistant snapshot, wherever the loader nested it."""
    if isinstance(state, dict):
        if "assistant" in state and "meta" in state and state["assistant"] is not None:
            return state["assistant"]["assistant"]
        for v in state.values():
            found = find_assistant(v)
            if found is not None:
                return found
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--store", default="data/store")
    ap.add_argument("--features", default="data/features")
    args = ap.parse_args()
    store = Store(args.store)
    task = task_for(store)
    model, _ = load_model(args.run, task, torch.device("cpu"))
    losses = score_store(model, task, torch.device("cpu"))["loss"]
    a = find_assistant(read_checkpoint(args.checkpoint)["graph"])
    labels = task.labels
    feats = np.asarray(read_features(args.features, task), dtype=np.float64)
    g = snapshot_predict(a, feats, labels)
    z = losses > a["threshold"]
    class_rate = np.bincount(labels, weights=z, minlength=store.num_classes) / np.bincount(labels)
    pixels_only = dict(a, w=np.concatenate([a["w"][:a["dim"]], np.zeros(store.num_classes)]))
    out = {"threshold": a["threshold"], "positives": float(z.mean()), "lambda": a["lam"],
           "accuracy_at_0.5": float(((g > 0.5) == z).mean()),
           "auc_assistant": float(roc_auc_score(z, g)),
           "auc_class_only_oracle": float(roc_auc_score(z, class_rate[labels])),
           "auc_assistant_pixels_only": float(roc_auc_score(z, snapshot_predict(pixels_only, feats, labels)))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
