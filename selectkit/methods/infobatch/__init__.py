"""InfoBatch-style unbiased pruning (Qin et al., ICLR 2024): before loading, drop a random
share of the examples whose last loss is below the mean and up-weight the survivors so the
expected gradient is unchanged. See README.md beside this file."""

from __future__ import annotations

from selectkit.methods.base import Method, ReportSection
from selectkit.methods.infobatch.config import InfoBatchConfig
from selectkit.methods.infobatch.report import markdown, summarise


def build(node, ctx, cfg: InfoBatchConfig):
    """The pruning node on a stream of id batches, re-batched to the candidate batch size."""
    from selectkit.methods.infobatch.node import InfoBatchPrune
    from selectkit.nodes.filter import Rebatch

    prune = InfoBatchPrune(node, ctx.loss_table, ratio=cfg.prune_ratio, delta=cfg.delta, epochs=ctx.epochs,
                           seed=ctx.seed)
    return Rebatch(prune, ctx.candidate_batch_size)


METHOD = Method(
    name="infobatch",
    slot="ids",
    config=InfoBatchConfig,
    title="InfoBatch: prune well-learned examples before loading, up-weight the rest (unbiased)",
    build=build,
    uses_loss_table=True,
    offered="ib/candidates",
    passed="ib/kept",
    counters=("ib/candidates", "ib/kept", "ib/pruned", "ib/well_learned", "ib/epoch_pruned_fraction"),
    report=ReportSection(summarise=summarise, markdown=markdown),
    example={"prune_ratio": 0.5, "delta": 0.875},
)
