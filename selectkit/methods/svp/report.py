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
    lines += vs_random_markdown(summary)
    names = analysis["class_names"]
    shares = analysis["class_share"]
    if len(names) <= 12:
        lines += ["", "Class shares (%):", "", "| subset | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for name, share in shares.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in share) + " |")
    else:  # many classes: one row per class
        lines += ["", "Class shares (%):", "", "| class | " + " | ".join(shares) + " |", "|" + "---|" * (len(shares) + 1)]
        for c, name in enumerate(names):
            lines.append(f"| {name} | " + " | ".join(f"{100 * share[c]:.1f}" for share in shares.values()) + " |")
    return "\n".join(lines) + "\n"


def vs_random(summary: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """For every SVP subset run ``svp-F`` with a random baseline ``random-F`` in ``summary``:
    both mean final errors and whether SVP's is lower, and SVP's speedup over random to the
    first target, end to end (time to it on the random subset / on SVP's, each plus the upstream
    stages its subset cost: SVP's proxy; None when either misses it)."""
    methods = summary.get("methods") or {}
    first = next(iter(summary.get("targets") or {}), None)
    out: Dict[str, Dict[str, Any]] = {}
    for label, m in methods.items():
        if not label.startswith("svp-") or f"random-{label[4:]}" not in methods:
            continue
        r = methods[f"random-{label[4:]}"]
        e_svp, e_rnd = m["final_test_error"]["mean"], r["final_test_error"]["mean"]
        # end to end: SVP's subset pays its proxy's training and scoring, a random one nothing
        t_svp = (m.get("time_to_target") or {}).get(first, {}).get("end_to_end_s") if first else None
        t_rnd = (r.get("time_to_target") or {}).get(first, {}).get("end_to_end_s") if first else None
        out[label[4:]] = {"svp_error": e_svp, "random_error": e_rnd, "svp_beats_random": e_svp < e_rnd,
                          "target": first, "svp_s": t_svp, "random_s": t_rnd,
                          "speedup_over_random": (t_rnd / t_svp) if t_svp and t_rnd else None}
    return out


def vs_random_markdown(summary: Dict[str, Any]) -> list:
    rows = vs_random(summary)
    if not rows:
        return []
    first = next(iter(rows.values()))["target"]
    lines = ["", f"SVP against a random subset of the same size (final error; time to {first} end to end, SVP's "
                 f"proxy included):", "",
             "| fraction | SVP | random | SVP better | SVP to target | random to target |", "|---|---|---|---|---|---|"]
    fmt = lambda t: "not reached" if t is None else f"{t:.1f} s"  # noqa: E731
    for frac, r in rows.items():
        lines.append(f"| {frac} | {100 * r['svp_error']:.2f} % | {100 * r['random_error']:.2f} % | "
                     f"{'yes' if r['svp_beats_random'] else 'no'} | {fmt(r['svp_s'])} | {fmt(r['random_s'])} |")
    return lines
