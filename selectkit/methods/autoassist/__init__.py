"""AutoAssist (Zhang, Yu, Dhillon, NeurIPS 2019): a gate before loading, driven by an assistant
that learns from the trainer's losses off the training thread. See README.md beside this file."""

from __future__ import annotations

from selectkit.methods.autoassist.config import AutoAssistConfig
from selectkit.methods.autoassist.report import markdown, plot, summarise
from selectkit.methods.base import Method, ReportSection


def build(node, ctx, cfg: AutoAssistConfig):
    """The gate on a stream of id batches, re-batched to the candidate batch size it received."""
    import numpy as np

    from selectkit.methods.autoassist.features import features_for
    from selectkit.methods.autoassist.node import AssistantWorker, AutoAssistGate, Publisher
    from selectkit.nodes.filter import Rebatch

    if getattr(ctx.task, "labels", None) is None:
        raise ValueError("the AutoAssist gate needs every example's label before loading (its per-class "
                         "bias): pass labels= (one int per example id) to SelectiveLoader")
    features = features_for(ctx.task, cfg.features, cfg.downsample)
    labels = np.asarray(ctx.task.labels, dtype=np.int64)
    worker = AssistantWorker(features, labels, ctx.task.num_classes,
                             {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "loss_ema": cfg.loss_ema,
                              "accuracy_ema": cfg.accuracy_ema}, mode=cfg.worker, queue_size=cfg.queue_size)
    gate = AutoAssistGate(node, worker, features, labels, ctx.task.fingerprint, seed=ctx.rank_seed, shadow=cfg.shadow,
                          warmup_epochs=cfg.warmup_epochs, max_lambda=cfg.max_lambda)
    ctx.add_listener("autoassist", Publisher(worker, cfg.max_lambda))
    return Rebatch(gate, ctx.candidate_batch_size)


def _upstream_s(cfg: AutoAssistConfig) -> float:
    from selectkit.methods.autoassist.features import upstream_seconds

    return upstream_seconds(cfg.features)


METHOD = Method(
    name="autoassist",
    slot="ids",
    config=AutoAssistConfig,
    title="AutoAssist: a cheap assistant decides which candidates are worth loading",
    build=build,
    offered="aa/candidates",
    passed="aa/passed",
    counters=("aa/candidates", "aa/passed", "aa/tested", "aa/published"),
    upstream_s=_upstream_s,
    report=ReportSection(summarise=summarise, markdown=markdown, plot=plot, plot_name="autoassist.png"),
    example={"worker": "inline", "lr": 0.5, "accuracy_ema": 0.5},
)
