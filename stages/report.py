"""DVC stage `report`: compare every training run as a markdown table, a JSON file and a PNG."""

import argparse
import json
import logging
from pathlib import Path

from selectkit.config import ReportConfig, TrackingConfig, load_params, load_section, to_dict
from selectkit.report import attach_costs, clean_json, expand_runs, load_run, markdown, plot, summarise
from selectkit.tracking import Tracker, atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="run directories (each with metrics.json, curve.csv); {seed} and {method} "
                         "in one expand over the params' `seeds` and `methods` lists")
    ap.add_argument("--out", required=True, help="report directory")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_section(args.params, "report", ReportConfig)
    tracking = load_section(args.params, "tracking", TrackingConfig)
    out = Path(args.out)
    run_dirs = expand_runs(args.runs, load_params(args.params))
    with Tracker(tracking, stage="report").run({"report": to_dict(cfg)}) as t:
        runs = [load_run(r) for r in run_dirs]
        costs = attach_costs(runs, cfg.cost_reps) if cfg.modelled else None
        summary = clean_json(summarise(runs, cfg.baseline, cfg.targets, costs))
        atomic_write_text(out / "summary.md", markdown(summary))
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot(runs, out / "error_vs_time.png", summary)
        for name in ("summary.md", "summary.json", "error_vs_time.png"):
            t.log_artifact(out / name)
        t.finish({"baseline_final_error": summary["baseline_final_error"]})
    print(markdown(summary))


if __name__ == "__main__":
    main()
