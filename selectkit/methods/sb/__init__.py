"""Selective-Backprop and Stale-SB (Jiang et al., 2019): a node after loading that keeps each
candidate with probability CDF_R(loss) ** beta. See README.md beside this file."""

from __future__ import annotations

from dataclasses import replace

from selectkit.methods.base import Method, ReportSection
from selectkit.methods.sb.config import SBConfig, check_run
from selectkit.methods.sb.report import markdown, summarise


def build(node, ctx, cfg: SBConfig):
    """SB / Stale-SB: score candidates, keep by CDF_R(loss) ** beta, re-batch the kept rows."""
    from selectkit.methods.sb.node import SelectiveBackprop
    from selectkit.nodes.filter import Rebatch

    if ctx.model is None:
        raise ValueError("Selective-Backprop scores candidates with the live model: build the input graph "
                         "with a model (selectkit.SelectiveLoader(..., model=model))")
    handle = ctx.model
    node = SelectiveBackprop(
        node, lambda x, y: handle.losses(x, y, cfg.selection_mode, cfg.selection_precision, cfg.selection_fold), ctx.loss_table,
        ctx.task.fingerprint, beta=cfg.beta, window=cfg.window, floor=cfg.floor,
        warmup_epochs=cfg.warmup_epochs, staleness=cfg.staleness, seed=ctx.rank_seed)
    node.channel = ctx.channel("sb/window", node.window.push)
    if cfg.staleness > 1 and ctx.defer is not None:
        # stale epochs select on the loss table alone: candidates come unloaded and the node
        # loads only the rows it keeps (a third), not every candidate's inputs
        node.load = ctx.load
        ctx.defer.append(node.is_stale)
    ctx.add_listener("sb", node.observe)
    return Rebatch(node, ctx.batch_size)


METHOD = Method(
    name="sb",
    slot="batches",
    config=SBConfig,
    title="Selective-Backprop / Stale-SB: backpropagate high-loss candidates only",
    build=build,
    candidate_batch_size=lambda cfg, batch_size: cfg.selection_batch_size,
    check=check_run,
    uses_loss_table=True,
    offered="sb/candidates",
    passed="sb/kept",
    counters=("sb/candidates", "sb/kept", "sb/selection_forwarded", "sb/kept_fraction"),
    selection=lambda cfg: {"batch_size": cfg.selection_batch_size, "mode": cfg.selection_mode,
                           "precision": cfg.selection_precision, "fold": cfg.selection_fold},
    tune_selection_batch=lambda cfg, n: replace(cfg, selection_batch_size=n),
    report=ReportSection(summarise=summarise, markdown=markdown),
    example={"beta": 1.0, "window": 64, "selection_batch_size": 64},
)
