"""AutoAssist's part of the report: pass rate, the assistant's quality, the boss's cost, and
a plot of the assistant's accuracy and the safeguard rate over time."""

from __future__ import annotations

import math
from statistics import mean
from typing import Any, Dict, List, Optional


def summarise(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Means over one label's runs; None when they ran no gate."""
    cs = [r.get("counters", {}) for r in runs]
    if not all(c.get("aa/candidates") for c in cs):
        return None
    return {
        "pass_rate": mean(c["aa/passed"] / c["aa/candidates"] for c in cs),
        "final_accuracy": mean(c["aa/accuracy"] for c in cs),
        "final_positives": mean(c.get("aa/positives", math.nan) for c in cs),
        "final_auc": mean(c.get("aa/auc", math.nan) for c in cs),
        "features": sorted({str(((r.get("methods") or {}).get("autoassist") or {}).get("features")
                                 or "the task's, at start") for r in runs}),
        "final_safeguard_rate": mean(c["aa/safeguard_rate"] for c in cs),
        "published": mean(c["aa/published"] for c in cs),
        "dropped": mean(c["aa/dropped"] for c in cs),
        "nan_losses": mean(c["aa/nan_losses"] for c in cs),
        "update_s": mean(c["aa/update_s"] for c in cs),
        # the boss's own cost: publishing losses (the assistant learns in its worker)
        "publish_share": mean(c["aa/publish_s"] / r["train_s"] for c, r in zip(cs, runs)),
        "gate_share": mean(c["aa/gate_s"] / r["train_s"] for c, r in zip(cs, runs)),
    }


def markdown(by_label: Dict[str, Dict[str, Any]]) -> str:
    lines = ["", "AutoAssist (means over seeds; accuracy, always-easy accuracy (1 - the share of z = 1: what "
             "answering 'easy' every time scores), ROC AUC of g against z and safeguard rate are EMAs at the "
             "end, each measured on a published batch before the assistant learns from it; 'publish' is the "
             "boss's own time handing losses over, 'gate' the gate's time in the loader thread, both as shares "
             "of training wall-clock):", "",
             "| method | features | pass rate | assistant accuracy | always-easy accuracy | AUC | safeguard rate "
             "| published | dropped | assistant update s | publish | gate |", "|" + "---|" * 12]
    for label, a in by_label.items():
        auc = "n/a" if a.get("final_auc") is None or a["final_auc"] != a["final_auc"] else f"{a['final_auc']:.3f}"
        feats = ", ".join(a.get("features") or ["?"])
        lines.append(f"| {label} | {feats} | {100 * a['pass_rate']:.1f} % | {100 * a['final_accuracy']:.1f} % | "
                     f"{100 * (1 - a['final_positives']):.1f} % | {auc} | {100 * a['final_safeguard_rate']:.1f} % | "
                     f"{a['published']:.0f} | {a['dropped']:.0f} | {a['update_s']:.2f} | "
                     f"{100 * a['publish_share']:.2f} % | {100 * a['gate_share']:.2f} % |")
    return "\n".join(lines) + "\n"


def plot(runs: List[Dict[str, Any]], path) -> None:
    """PNG of the assistant's accuracy and the safeguard rate over training wall-clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selectkit.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours: Dict[str, Any] = {}
    for r in runs:
        rows = [row for row in r["curve"] if not math.isnan(row.get("aa/lambda", math.nan))]
        if not rows:
            continue
        c = colours.setdefault(r["label"], f"C{len(colours)}")
        xs = [row["wall_s"] for row in rows]
        for ax, key in zip(axes, ("aa/accuracy", "aa/safeguard_rate")):
            new = r["label"] not in ax.get_legend_handles_labels()[1]
            ax.plot(xs, [100 * row[key] for row in rows], color=c, alpha=0.8, label=r["label"] if new else None)
    for ax, title in zip(axes, ("assistant accuracy (%)", "safeguard rate 1 - lambda (%)")):
        ax.set_xlabel("training wall-clock (s)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if colours:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no AutoAssist runs", ha="center", transform=ax.transAxes)
    save_figure(fig, path, dpi=110)
