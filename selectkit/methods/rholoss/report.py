"""RHO-LOSS's part of the report: what it kept, against the candidates it was offered."""

from __future__ import annotations

from statistics import mean
from typing import Any, Dict, List, Optional


def summarise(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Means over one label's runs; None when they ran no RHO-LOSS."""
    cs = [r.get("counters", {}) for r in runs]
    if not all(c.get("rho/candidates") for c in cs):
        return None
    return {
        "kept_fraction": mean(c["rho/kept"] / c["rho/candidates"] for c in cs),
        "reducible_kept": mean(c["rho/reducible_kept_sum"] / c["rho/kept"] for c in cs),
        "reducible_all": mean(c["rho/reducible_sum"] / c["rho/candidates"] for c in cs),
        "irreducible_kept": mean(c["rho/irreducible_kept_sum"] / c["rho/kept"] for c in cs),
        "irreducible_all": mean(c["rho/irreducible_sum"] / c["rho/candidates"] for c in cs),
        "loss_topk_overlap": mean(c["rho/loss_topk_overlap"] / c["rho/kept"] for c in cs),
        "selection_share": mean(c["rho/selection_s"] / r["train_s"] for c, r in zip(cs, runs)),
        "node_share": mean(c["rho/node_s"] / r["train_s"] for c, r in zip(cs, runs)),
        "upstream_s": mean(r.get("upstream_s", 0.0) for r in runs),
    }


def markdown(by_label: Dict[str, Dict[str, Any]]) -> str:
    lines = ["", "RHO-LOSS (means over seeds and all selective candidate batches; reducible = training loss minus "
             "the irreducible-loss model's loss; 'same as by loss' is the share of kept examples that ranking by "
             "training loss alone would have kept too):", "",
             "| method | kept | reducible loss, kept / all | irreducible loss, kept / all | same as by loss | "
             "selection forwards | node | irreducible-loss model (train + score) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, s in by_label.items():
        lines.append(f"| {label} | {100 * s['kept_fraction']:.1f} % | {s['reducible_kept']:.3f} / "
                     f"{s['reducible_all']:.3f} | {s['irreducible_kept']:.3f} / {s['irreducible_all']:.3f} | "
                     f"{100 * s['loss_topk_overlap']:.1f} % | {100 * s['selection_share']:.1f} % | "
                     f"{100 * s['node_share']:.2f} % | {s['upstream_s']:.1f} s |")
    return "\n".join(lines) + "\n"
