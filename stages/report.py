"""DVC stage `report`: compare every training run as a markdown table, a JSON file and a PNG."""

import argparse
import json
import logging
from pathlib import Path

from selectkit.config import ReportConfig, TrackingConfig, load_params, load_section, to_dict
from selectkit.io import atomic_write_text
from selectkit.methods.svp.report import svp_analysis, svp_markdown
from selectkit.report import attach_costs, clean_json, expand_runs, load_run, markdown, method_plots, plot, summarise
from selectkit.store import Store
from selectkit.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run directories (each with metrics.json, curve.csv); {seed} and {method} "
                         "in one expand over the params' `seeds` and `methods` lists")
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--svp-proxies", nargs="*", default=[], help="SVP: proxies' scores dirs ({proxy_seed} expands)")
    ap.add_argument("--svp-target", default=None, help="SVP: scores dir of a target trained on all data")
    ap.add_argument("--svp-subsets", nargs="*", default=[], help="SVP: subset dirs ({kind}, {fraction} expand)")
    ap.add_argument("--store", default=None, help="SVP: the store (for class distributions)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_section(args.params, "report", ReportConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    out = Path(args.out)
    params = load_params(args.params)
    run_dirs = expand_runs(args.runs, params)
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
            summary["svp"] = clean_json(analysis)
            text += svp_markdown(analysis, summary)
        atomic_write_text(out / "summary.md", text)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot(runs, out / "error_vs_time.png", summary)
        names = ["summary.md", "summary.json", "error_vs_time.png"] + method_plots(runs, out)
        for name in names:
            t.log_artifact(out / name)
        t.finish({"baseline_final_error": summary["baseline_final_error"]})
    print(text)


if __name__ == "__main__":
    main()
