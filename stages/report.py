"""DVC stage `report`: compare every training run as a markdown table (summary.md), a JSON file
with every figure (summary.json), a few flat numbers per method for DVC metrics
(metrics/<label>.json, under the same keys as each run's metrics.json), every run's curve in
one CSV for DVC plots (curves.csv) and a PNG (error_vs_time.png)."""

import argparse
import json
from pathlib import Path
from typing import List, Optional

from selectkit.cli import run_stage
from selectkit.config import ReportConfig, TrackingConfig, load_params, load_section, to_dict
from selectkit.io import atomic_write_text, check_writable


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run directories (each with run.json, curve.csv); {seed} and {method} "
                         "in one expand over the params' `seeds` and `methods` lists")
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--svp-proxies", nargs="*", default=[], help="SVP: proxies' scores dirs ({proxy_seed} expands)")
    ap.add_argument("--svp-target", default=None, help="SVP: scores dir of a target trained on all data")
    ap.add_argument("--svp-subsets", nargs="*", default=[], help="SVP: subset dirs ({kind}, {fraction} expand)")
    ap.add_argument("--store", default=None, help="SVP: the store (for class distributions)")
    return ap


def validate(args: argparse.Namespace):
    """params' `report` and `tracking`, every path pattern's expansion, and that --out can be
    written. Returns (ReportConfig, TrackingConfig, params, run directories)."""
    from selectkit.report import expand_runs
    from selectkit.validation import UsageError

    cfg = load_section(args.params, "report", ReportConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    params = load_params(args.params)
    run_dirs = expand_runs(args.runs, params)
    expand_runs(args.svp_proxies, params)
    expand_runs(args.svp_subsets, params)
    if (args.svp_proxies or args.svp_subsets) and not args.store:
        raise UsageError("--svp-proxies/--svp-subsets need --store (the store the subsets were chosen from)")
    check_writable(args.out, "--out", "pass a report directory you can write")
    return cfg, tracking, params, run_dirs


def main(argv: Optional[List[str]] = None) -> None:
    from selectkit.io import fresh_dir, replace_dir
    from selectkit.methods.svp.report import svp_analysis, svp_markdown
    from selectkit.plots import method_plots, plot
    from selectkit.report import (attach_costs, clean_json, expand_runs, headline, load_run, markdown, summarise,
                                  write_curves)
    from selectkit.store import Store
    from selectkit.tracking import Tracker

    args = parser().parse_args(argv)
    cfg, tracking, params, run_dirs = validate(args)
    out = Path(args.out)
    with Tracker(tracking, stage="report").run({"report": to_dict(cfg)}) as t:
        runs = [load_run(r) for r in run_dirs]
        costs = attach_costs(runs, cfg.cost_reps) if cfg.modelled else None
        summary = clean_json(summarise(runs, cfg.baseline, cfg.targets, costs))
        text = markdown(summary)
        if args.svp_proxies or args.svp_subsets:
            store = Store(args.store)
            metric = (params.get("choose") or {}).get("metric", "entropy")
            analysis = svp_analysis(expand_runs(args.svp_proxies, params), args.svp_target,
                                    expand_runs(args.svp_subsets, params), metric,
                                    store.meta["class_names"], store.train.y)
            from selectkit.methods.svp.report import vs_random

            summary["svp"] = clean_json({**analysis, "vs_random": vs_random(summary)})
            text += svp_markdown(analysis, summary)
        atomic_write_text(out / "summary.md", text)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        tmp = fresh_dir(out / "metrics")
        for label, figures in headline(summary).items():
            (tmp / f"{label.replace('/', '_')}.json").write_text(json.dumps(figures, indent=2) + "\n")
        replace_dir(tmp, out / "metrics")
        write_curves(runs, out / "curves.csv")
        plot(runs, out / "error_vs_time.png", summary)
        names = ["summary.md", "summary.json", "curves.csv", "error_vs_time.png"] + method_plots(runs, out)
        for name in names:
            t.log_artifact(out / name)
        for f in sorted((out / "metrics").iterdir()):
            t.log_artifact(f, artifact_path="metrics")
        t.finish({"baseline_final_error": summary["baseline_final_error"]})
    print(text)


if __name__ == "__main__":
    run_stage(main)
