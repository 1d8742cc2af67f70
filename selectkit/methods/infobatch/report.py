"""InfoBatch's part of the report: how much it really pruned, and the per-epoch share."""

from __future__ import annotations

import math
from statistics import mean
from typing import Any, Dict, List, Optional


def _epoch_fractions(run: Dict[str, Any]) -> List[float]:
    """The pruned share of each pruning epoch, read from the curve's evaluation rows."""
    seen: Dict[int, float] = {}
    for row in run.get("curve", []):
        v = row.get("ib/epoch_pruned_fraction", math.nan)
        if v == v and v > 0:
            seen[int(row["epoch"])] = v
    return list(seen.values())


def summarise(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Means over one label's runs; None when they ran no InfoBatch."""
    cs = [r.get("counters", {}) for r in runs]
    if not all(c.get("ib/candidates") for c in cs):
        return None
    per_epoch = [f for r in runs for f in _epoch_fractions(r)]
    return {
        "pruned_fraction": mean(c["ib/pruned"] / c["ib/candidates"] for c in cs),
        "well_learned_fraction": mean(c["ib/well_learned"] / c["ib/candidates"] for c in cs),
        "pruning_epochs": mean(c["ib/pruning_epochs"] for c in cs),
        "epoch_pruned_min": min(per_epoch) if per_epoch else None,
        "epoch_pruned_max": max(per_epoch) if per_epoch else None,
        "node_share": mean(c["ib/prune_s"] / r["train_s"] for c, r in zip(cs, runs)),
    }


def markdown(by_label: Dict[str, Dict[str, Any]]) -> str:
    lines = ["", "InfoBatch (means over seeds; shares of all candidates over the whole run; 'per pruning epoch' "
             "is the share of scored examples pruned in each epoch that pruned, min to max):", "",
             "| method | pruned | below the mean | pruning epochs | pruned per pruning epoch | node |",
             "|---|---|---|---|---|---|"]
    for label, s in by_label.items():
        per = (f"{100 * s['epoch_pruned_min']:.1f}-{100 * s['epoch_pruned_max']:.1f} %"
               if s["epoch_pruned_min"] is not None else "none")
        lines.append(f"| {label} | {100 * s['pruned_fraction']:.1f} % | {100 * s['well_learned_fraction']:.1f} % | "
                     f"{s['pruning_epochs']:.0f} | {per} | {100 * s['node_share']:.2f} % |")
    return "\n".join(lines) + "\n"
