"""RHO-LOSS (Mindermann et al., ICML 2022): from each candidate batch, train on the examples
with the largest reducible loss (training loss minus a cached irreducible loss from a model
trained on the store's holdout). See README.md beside this file."""

from __future__ import annotations

from selectkit.methods.base import Method, ReportSection
from selectkit.methods.rholoss.config import RhoLossConfig, check_run
from selectkit.methods.rholoss.report import markdown, summarise


def build(node, ctx, cfg: RhoLossConfig):
    """Score every candidate batch with the live model, keep the top reducible losses, re-batch."""
    from selectkit.methods.rholoss.artifacts import load_irreducible
    from selectkit.methods.rholoss.node import RhoLoss
    from selectkit.nodes.filter import Rebatch

    if ctx.model is None:
        raise ValueError("RHO-LOSS scores candidates with the live model: build the input graph with a model "
                         "(selectkit.SelectiveLoader(..., model=model))")
    irreducible, prov = load_irreducible(cfg.irreducible, ctx.task)
    handle = ctx.model
    node = RhoLoss(node, lambda x, y: handle.losses(x, y, cfg.selection_mode, cfg.selection_precision,
                                                    cfg.selection_fold),
                   irreducible, ctx.task.fingerprint, irreducible_id=prov["loss_sha256"], fraction=cfg.fraction,
                   rule=cfg.rule, temperature=cfg.temperature, warmup_epochs=cfg.warmup_epochs, seed=ctx.rank_seed)
    return Rebatch(node, ctx.batch_size)


def _upstream_s(cfg: RhoLossConfig) -> float:
    from selectkit.methods.rholoss.artifacts import upstream_seconds

    return upstream_seconds(cfg.irreducible)


def _make_example(task, directory) -> dict:
    """Example params reading a tiny irreducible-loss artifact for ``task`` (seeded losses)."""
    from pathlib import Path

    import numpy as np

    from selectkit.methods.svp.artifacts import write_scores
    from selectkit.methods.svp.functions import METRICS

    n = len(task)
    loss = np.random.default_rng(0).gamma(2.0, 0.5, n).astype(np.float32)
    out = Path(directory) / f"irreducible-{task.fingerprint}"
    write_scores(out, {"ids": np.arange(n, dtype=np.int64), **{m: loss for m in METRICS}},
                 {"proxy_run": "example (seeded losses)", "store_fingerprint": task.fingerprint})
    return {**METHOD.example, "irreducible": str(out)}


METHOD = Method(
    name="rholoss",
    slot="batches",
    config=RhoLossConfig,
    title="RHO-LOSS: train on the candidates with the largest reducible loss (cached irreducible losses)",
    build=build,
    candidate_batch_size=lambda cfg, batch_size: cfg.selection_batch_size,
    check=check_run,
    offered="rho/candidates",
    passed="rho/kept",
    counters=("rho/candidates", "rho/kept", "rho/selection_forwarded", "rho/kept_fraction"),
    selection=lambda cfg: {"batch_size": cfg.selection_batch_size, "mode": cfg.selection_mode,
                           "precision": cfg.selection_precision, "fold": cfg.selection_fold},
    upstream_s=_upstream_s,
    report=ReportSection(summarise=summarise, markdown=markdown),
    example={"irreducible": "data/irreducible", "fraction": 0.25, "selection_batch_size": 64},
    make_example=_make_example,
)
