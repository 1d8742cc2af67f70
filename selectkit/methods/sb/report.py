"""Selective-Backprop's part of the report: what was kept, what selection cost."""

from __future__ import annotations

from statistics import mean
from typing import Any, Dict, List, Optional


def summarise(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Means over one label's runs; None when they ran no SB."""
    cs = [r.get("counters", {}) for r in runs]
    if not all(c.get("sb/candidates") for c in cs):
        return None
    return {
        "kept_fraction": mean(c["sb/kept"] / c["sb/candidates"] for c in cs),
        "selection_forwarded": mean(c["sb/selection_forwarded"] for c in cs),
        "stale_selected": mean(c["sb/stale_selected"] for c in cs),
        # the node's own bookkeeping, its selection forwards excluded, as a share of training time
        "node_share": mean(c["sb/node_s"] / r["train_s"] for c, r in zip(cs, runs)),
        "selection_share": mean(c["sb/selection_s"] / r["train_s"] for c, r in zip(cs, runs)),
    }


def markdown(by_label: Dict[str, Dict[str, Any]]) -> str:
    lines = ["", "Selective-Backprop (means over seeds; 'node' is the node's own bookkeeping, its selection "
             "forwards excluded; both shares of training wall-clock):", "",
             "| method | kept | selection forwards | selected from stale losses | selection forwards' time | node |",
             "|---|---|---|---|---|---|"]
    for label, s in by_label.items():
        lines.append(f"| {label} | {100 * s['kept_fraction']:.1f} % | {s['selection_forwarded'] / 1e6:.3f} M | "
                     f"{s['stale_selected'] / 1e6:.3f} M | {100 * s['selection_share']:.1f} % | "
                     f"{100 * s['node_share']:.1f} % |")
    return "\n".join(lines) + "\n"
