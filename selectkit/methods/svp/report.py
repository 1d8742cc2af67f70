"""SVP's part of the report: rank correlation of proxies with the all-data target, class shares
of each subset, and end-to-end times that pay the selection cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from selectkit.methods.svp.functions import ranks


def svp_analysis(proxy_dirs: Sequence[str], target_dir: Optional[str], subset_dirs: Sequence[str],
                 metric: str, class_names: Sequence[str], labels) -> Dict[str, Any]:
    """SVP's analysis: Spearman rank correlation of each proxy's and the ensemble's scores with
    a target trained on all data (the paper's Figure 3), each subset's class distribution (its
    Table 2), and the selection cost (proxy training + scoring seconds) to add end to end."""
    from selectkit.methods.svp.artifacts import read_scores

    def spearman(a, b) -> float:
        return float(np.corrcoef(ranks(a), ranks(b))[0, 1])

    proxies = [read_scores(d) for d in proxy_dirs]
    out: Dict[str, Any] = {"metric": metric, "selection_cost_s": sum(
        (p.get("proxy_train_s") or 0.0) + (p.get("score_s") or 0.0) for _, p in proxies)}
    if target_dir and proxies:
        target, _ = read_scores(target_dir)
        ensemble = np.sum([ranks(s[metric]) for s, _ in proxies], axis=0)
        out["spearman_with_target"] = {
            **{p["proxy_run"]: spearman(s[metric], target[metric]) for s, p in proxies},
            # the ensemble's rank sum orders examples like a rank (0 = most uncertain)
            "ensemble (rank sum)": float(np.corrcoef(ensemble, ranks(target[metric]))[0, 1]),
        }
    labels = np.asarray(labels)
    full = np.bincount(labels, minlength=len(class_names))
    out["class_share"] = {"all data": (full / full.sum()).tolist()}
    for d in subset_dirs:
        ids = np.load(Path(d) / "ids.npy")
        c = np.bincount(labels[ids], minlength=len(class_names))
        out["class_share"][Path(d).name] = (c / c.sum()).tolist()
    out["class_names"] = list(class_names)
    return out


def svp_markdown(analysis: Dict[str, Any], summary: Dict[str, Any]) -> str:
    """Markdown for svp_analysis (the end-to-end times are the report's own table: every run
    records the upstream seconds its subset cost)."""
    lines = ["", f"SVP selection cost (proxy training + scoring, all proxies): "
             f"{analysis['selection_cost_s']:.1f} s.", ""]
    if "spearman_with_target" in analysis:
        lines += [f"Spearman rank correlation of {analysis['metric']} with the all-data target's:", "",
                  "| scores | Spearman |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in analysis["spearman_with_target"].items()]
    names = analysis["class_names"]
    lines += ["", "Class shares (%):", "", "| subset | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for name, share in analysis["class_share"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in share) + " |")
    return "\n".join(lines) + "\n"
