"""SVP's cached artifacts: per-example proxy scores, and subsets with their provenance.

A scores directory holds ``scores.npz`` (``ids`` int64, one float32 array per metric and,
when asked, ``embeddings``: float32 penultimate-layer features, one row per id) and
``provenance.json`` (the proxy run, its model, the store fingerprint). A subset directory holds
``ids.npy`` (sorted unique int64 train ids) and ``subset.json`` (store fingerprint, proxies,
metric, rule, fraction/size, seed, ids hash). Both are written under a temporary name and
renamed, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from selectkit.io import fresh_dir, replace_dir
from selectkit.methods.svp import functions as svpf
from selectkit.methods.svp.functions import METRICS, ids_hash, uncertainty
from selectkit.models import classifier
from selectkit.store import Store
from selectkit.validation import ConfigError, to_dict


@torch.inference_mode()
def score_store(model: torch.nn.Module, task, device: torch.device, batch_size: int = 1000,
                source: str = "proxy", embeddings: bool = False, rank: int = 0,
                world_size: int = 1) -> Dict[str, np.ndarray]:
    """Run ``model`` once over the task's train split (eval mode, no graph) and score every example.

    With ``embeddings`` the input of the model's last linear layer (the penultimate-layer
    embedding) is kept too, as ``embeddings`` (float32, one row per id).

    With ``world_size`` > 1 (a running process group) each rank scores every ``world_size``-th
    batch and the ranks all-gather their rows, placed by example id: every rank returns the
    whole result, equal to one process's (the same batches, each computed the same way).

    Raises:
        FloatingPointError: non-finite outputs, naming the example ids and ``source``.
    """
    model.eval()
    probs, embs, losses, order = [], [], [], []
    hook = None
    if embeddings:
        hook = classifier(model).register_forward_pre_hook(
            lambda _m, inp: embs.append(inp[0].detach().float().flatten(1).cpu().numpy()))
    try:
        for b in (task.train_batches(batch_size, rank, world_size) if world_size > 1 else task.train_batches(batch_size)):
            order.append(np.asarray(b["ids"]))
            x, y = task.to_device(b, device)
            logits = task.forward(model, x).float()
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            losses.append(task.losses(logits, y).float().cpu().numpy())  # the training loss, from logits
    finally:
        if hook is not None:
            hook.remove()
    if world_size > 1:
        from selectkit import dist

        parts = dist.all_gather_object((order, probs, losses, embs))
        order, probs, losses, embs = ([a for part in parts for a in part[k]] for k in range(4))
    # batches may come in any order (a text task's shortest first): put rows back in id order
    where = np.argsort(np.concatenate(order), kind="stable")
    p = np.concatenate(probs)[where]
    bad = np.flatnonzero(~np.isfinite(p).all(axis=1))
    if bad.size:
        raise FloatingPointError(f"{source} gives non-finite outputs for example ids {bad[:10].tolist()}: "
                                 f"retrain it (lower its lr) before scoring")
    scores = uncertainty(p, task.labels)
    # the task's own loss from the logits: finite where a probability underflows to 0, and the
    # same function training minimises (RHO-LOSS subtracts it from training losses)
    scores["loss"] = np.concatenate(losses)[where]
    bad = np.flatnonzero(~np.isfinite(scores["loss"]))
    if bad.size:
        raise FloatingPointError(f"{source} gives non-finite losses for example ids {bad[:10].tolist()}: "
                                 f"retrain it (lower its lr) before scoring")
    out = {"ids": np.arange(len(task), dtype=np.int64), **{k: v.astype(np.float32) for k, v in scores.items()}}
    if embeddings:
        out["embeddings"] = np.concatenate(embs)[where].astype(np.float32)
    return out


def write_scores(out: str | Path, scores: Dict[str, np.ndarray], provenance: Dict[str, Any]) -> None:
    out = Path(out)
    tmp = fresh_dir(out)
    np.savez(tmp / "scores.npz", **scores)
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, out)


def read_scores(path: str | Path) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Scores and provenance of one proxy; NaN/inf scores fail naming ids and the proxy run."""
    d = Path(path)
    if not (d / "scores.npz").is_file() or not (d / "provenance.json").is_file():
        raise FileNotFoundError(f"{d} holds no scores (scores.npz + provenance.json): run its score stage")
    prov = json.loads((d / "provenance.json").read_text())
    with np.load(d / "scores.npz") as z:
        scores = {k: z[k] for k in z.files}
    for m in METRICS:
        bad = np.flatnonzero(~np.isfinite(scores[m]))
        if bad.size:
            raise ValueError(f"{d}: {m} scores of proxy run {prov.get('proxy_run')} are NaN/inf for example "
                             f"ids {scores['ids'][bad[:10]].tolist()}: rerun that proxy's score stage")
    return scores, prov


def check_same_store(provenances: List[Dict[str, Any]], store: Store) -> None:
    """All proxies scored the store being selected from."""
    for p in provenances:
        if p["store_fingerprint"] != store.fingerprint:
            raise ValueError(f"scores of proxy run {p['proxy_run']} come from store {p['store_fingerprint']} but "
                             f"the store is {store.fingerprint}: rerun that proxy's train and score stages")


def write_subset(out: str | Path, ids: np.ndarray, provenance: Dict[str, Any]) -> Dict[str, Any]:
    """Write a subset artifact; returns its full provenance (with size and ids hash)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if len(np.unique(ids)) != len(ids):
        raise ValueError("a subset lists each example once; got duplicated ids")
    meta = {**provenance, "size": int(len(ids)), "ids_sha256": ids_hash(ids)}
    out = Path(out)
    tmp = fresh_dir(out)
    np.save(tmp / "ids.npy", ids)
    (tmp / "subset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, out)
    return meta


def read_subset(path: str | Path, store: Store) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A subset's ids, checked against the store it will be trained on.

    Raises:
        ValueError: made from another store (names both fingerprints and the stage to rerun),
            or its ids do not match their recorded hash.
    """
    d = Path(path)
    meta = json.loads((d / "subset.json").read_text())
    if meta["store_fingerprint"] != store.fingerprint:
        raise ValueError(f"subset {d} was selected from store {meta['store_fingerprint']} but training uses "
                         f"store {store.fingerprint}: rerun the stage that wrote {d} (its score and choose "
                         f"stages) on this store")
    ids = np.load(d / "ids.npy", allow_pickle=False)
    if ids_hash(ids) != meta["ids_sha256"]:
        raise ValueError(f"subset {d}: ids.npy does not match the hash in subset.json: rerun its choose stage")
    return ids, meta


def subset_upstream_s(path: str | Path) -> float:
    """Seconds an SVP subset cost upstream: its proxies' training plus scoring (0 for the random
    baseline, which uses no proxy, and for a bare .npy of ids)."""
    p = Path(path) / "subset.json"
    if not p.is_file():
        return 0.0
    meta = json.loads(p.read_text())
    if meta.get("rule") == "random":
        return 0.0
    return sum(float(q.get("proxy_train_s") or 0.0) + float(q.get("score_s") or 0.0) for q in meta.get("proxies", []))


def choose_subset(cfg, store: Store, score_dirs) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The subset's ids and provenance for a ChooseConfig, from the proxies' scores directories.

    Raises:
        ConfigError: a rule that does not fit the number of proxies.
        ValueError: scores of another store or size, NaN scores (see read_scores).
    """
    all_labels = np.asarray(store.train.y)
    n_all = len(all_labels)
    # a subset is chosen from the train split minus the store's holdout (never trained on)
    eligible = np.setdiff1d(np.arange(n_all, dtype=np.int64), store.holdout_ids)
    labels = all_labels[eligible]
    n = len(eligible)
    k = svpf.count(n, cfg.fraction, cfg.size)
    bal = labels if cfg.balance else None
    scores, provs = [], []
    for d in score_dirs:
        s, p = read_scores(d)
        if len(s["ids"]) != n_all:
            raise ValueError(f"{d} scores {len(s['ids'])} examples but the store has {n_all}: rerun its score stage")
        scores.append(s[cfg.metric][eligible])
        provs.append(p)
    check_same_store(provs, store)
    if cfg.rule == "random":
        ids = svpf.random_subset(n, k, cfg.seed, bal)
    elif cfg.rule == "single":
        if len(scores) != 1:
            raise ConfigError(f"choose.rule='single' takes one proxy's scores, got {len(scores)}: "
                              f"use rank_sum or alternating to combine an ensemble")
        ids = svpf.select_single(scores[0], k, bal)
    elif cfg.rule == "rank_sum":
        ids = svpf.rank_sum(scores, k, bal)
    else:
        if cfg.balance:
            raise ConfigError("choose.balance is not supported with rule 'alternating'")
        ids = svpf.alternating(scores, k)
    ids = eligible[np.asarray(ids, dtype=np.int64)]
    prov = {"store_fingerprint": store.fingerprint, "proxies": provs, **to_dict(cfg), "k": k}
    return ids, prov
