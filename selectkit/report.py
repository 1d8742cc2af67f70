"""Compare training runs: a markdown table, a JSON file with every figure, and a PNG of test
error against training wall-clock (BENCHMARK.md's protocol)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Optional, Sequence

from selectkit.io import atomic_write
from selectkit.methods import METHODS

TIME_PHASES = ("data", "selection", "forward", "backward", "optimizer", "other")


def expand_runs(patterns: Sequence[str], params: Dict[str, Any]) -> List[str]:
    """Expand ``{name}`` fields in path patterns over the params list ``<name>s``
    (``{seed}`` over ``seeds``, ``{method}`` over ``methods``, ``{proxy_seed}`` over
    ``proxy_seeds``, ...), fields varying left to right.

    Raises:
        ValueError: a pattern names a field whose params list is missing or empty.
    """
    import itertools
    import string

    out: List[str] = []
    for pat in patterns:
        used = list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(pat) if f))
        lists = []
        for f in used:
            values = params.get(f + "s")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{pat!r} uses {{{f}}} but params' {f}s={values!r} is not a non-empty list")
            lists.append(values)
        for combo in itertools.product(*lists):
            out.append(pat.format(**dict(zip(used, combo))))
    return out


def load_run(run_dir: str | Path) -> Dict[str, Any]:
    """A training stage's outputs: metrics.json plus the curve.csv of evaluation points."""
    d = Path(run_dir)
    mpath, cpath = d / "metrics.json", d / "curve.csv"
    for p in (mpath, cpath):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: {d} is not a finished training run (rerun its train stage)")
    run = json.loads(mpath.read_text())
    with cpath.open() as f:
        run["curve"] = [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
    run["name"] = d.name
    return run


def time_to_error(curve: Sequence[Dict[str, float]], target: float) -> Optional[float]:
    """First training wall-clock (s) at which test error <= target; None if never reached."""
    for row in curve:
        if row["test_error"] <= target:
            return row["wall_s"]
    return None


def selection_forwards(row: Dict[str, float]) -> float:
    """Examples a run forwarded for selection up to an evaluation row: every method counts its
    own as ``<method>/selection_forwarded`` (NaN, a column absent in this run, counts as none)."""
    return sum(v for k, v in row.items() if k.endswith("/selection_forwarded") and v == v)


def modelled_seconds(row: Dict[str, float], costs: Dict[str, float]) -> float:
    """Noise-free time of a run up to an evaluation row: its backpropagated examples times the
    per-example train-step cost, plus its selection forwards times the per-example forward cost."""
    return (row["examples_seen"] * costs["train_per_example_s"]
            + selection_forwards(row) * costs["forward_per_example_s"])


def attach_costs(runs: List[Dict[str, Any]], reps: int = 20) -> Dict[str, Dict[str, float]]:
    """Measure per-example costs once per distinct (model, batch sizes, mode) and attach them
    to each run as ``run["costs"]``; returns the measurements by key."""
    from selectkit.config import ModelConfig
    from selectkit.costs import measure_costs

    measured: Dict[str, Dict[str, float]] = {}
    keys = []
    for r in runs:
        sel = r["selection"]
        train_key = json.dumps([r["model"], r["task"], r["spec"], r["batch_size"], r["channels_last"]], sort_keys=True)
        key = json.dumps([r["model"], r["task"], r["spec"], r["batch_size"], r["channels_last"], sel], sort_keys=True)
        if key not in measured:
            measured[key] = measure_costs(ModelConfig(r["model"]["name"], r["model"]["args"]), r["task"], r["spec"],
                                          r["num_classes"], r["batch_size"], sel["batch_size"], reps=reps,
                                          channels_last=r["channels_last"], selection_mode=sel["mode"],
                                          selection_precision=sel["precision"])
            measured[key]["train_key"] = train_key
        keys.append((train_key, key))
    # One train-step cost per model and batch (the median of its measurements), so that the
    # baseline and the methods are modelled with the same step cost.
    train_cost = {}
    for tk in {t for t, _ in keys}:
        train_cost[tk] = statistics.median(m["train_per_example_s"] for m in measured.values() if m["train_key"] == tk)
    for r, (tk, key) in zip(runs, keys):
        r["costs"] = {"train_per_example_s": train_cost[tk],
                      "forward_per_example_s": measured[key]["forward_per_example_s"],
                      "ratio": train_cost[tk] / measured[key]["forward_per_example_s"]}
    return measured


def _ms(values: List[float]) -> Dict[str, float]:
    return {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(runs: List[Dict[str, Any]], baseline: str, targets: Sequence[float],
              costs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Group runs by label; compute final error, wall-clock, counts, time split and time-to-target.

    Target errors are multiples of the baseline label's mean final error; a method's speedup at
    a target is the baseline's mean time to it over the method's (None where not reached).
    """
    labels: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        labels.setdefault(r["label"], []).append(r)
    if baseline not in labels:
        raise ValueError(f"report.baseline={baseline!r} matches no run; labels present: {sorted(labels)}")
    base_err = mean(r["final_test_error"] for r in labels[baseline])
    out: Dict[str, Any] = {"baseline": baseline, "baseline_final_error": base_err, "targets": {}, "methods": {},
                           "costs": costs or {}}
    for t in targets:
        out["targets"][f"{t:g}x"] = t * base_err
    for label, rs in labels.items():
        m: Dict[str, Any] = {
            "runs": [r["name"] for r in rs], "seeds": [r.get("seed") for r in rs],
            "final_test_error": _ms([r["final_test_error"] for r in rs]),
            "train_s": _ms([r["train_s"] for r in rs]),
            "examples_forwarded": _ms([r["examples_forwarded"] for r in rs]),
            "examples_backpropagated": _ms([r["examples_backpropagated"] for r in rs]),
            "seconds": {p: mean(r["seconds"].get(p, 0.0) for r in rs) for p in TIME_PHASES},
            "time_to_target": {},
        }
        for key, err in out["targets"].items():
            times = [time_to_error(r["curve"], err) for r in rs]
            reached = [x for x in times if x is not None]
            tt = {"mean_s": mean(reached) if len(reached) == len(times) else None,
                  "reached": len(reached), "of": len(times)}
            if all("costs" in r for r in rs):
                mod = [_modelled_time(r, err) for r in rs]
                tt["modelled_s"] = mean(mod) if all(x is not None for x in mod) else None
            m["time_to_target"][key] = tt
        for method in METHODS.values():  # each method's own figures, where its runs hold them
            if method.report is not None and (figures := method.report.summarise(rs)) is not None:
                m.setdefault("method_figures", {})[method.name] = figures
        out["methods"][label] = m
    for label, m in out["methods"].items():
        for key, tt in m["time_to_target"].items():
            base = out["methods"][baseline]["time_to_target"][key]
            tt["speedup"] = (base["mean_s"] / tt["mean_s"]) if (base["mean_s"] and tt["mean_s"]) else None
            if "modelled_s" in tt:
                b, t = base.get("modelled_s"), tt["modelled_s"]
                tt["modelled_speedup"] = (b / t) if (b and t) else None
    return out


def _modelled_time(run: Dict[str, Any], target: float) -> Optional[float]:
    for row in run["curve"]:
        if row["test_error"] <= target:
            return modelled_seconds(row, run["costs"])
    return None


def _pct(d: Dict[str, float]) -> str:
    return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f} %"


def markdown(summary: Dict[str, Any]) -> str:
    """The comparison table, one row per method."""
    keys = list(summary["targets"])
    head = ["method", "seeds", "final test error", "train wall-clock (s)", "forwarded", "backpropagated"]
    head += [f"time to {k} (speedup)" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in summary["methods"].items():
        cells = [label, str(m["final_test_error"]["n"]), _pct(m["final_test_error"]),
                 f"{m['train_s']['mean']:.1f} ± {m['train_s']['std']:.1f}",
                 f"{m['examples_forwarded']['mean'] / 1e6:.3f} M", f"{m['examples_backpropagated']['mean'] / 1e6:.3f} M"]
        for k in keys:
            tt = m["time_to_target"][k]
            if tt["mean_s"] is None:
                cell = f"not reached ({tt['reached']}/{tt['of']} seeds)"
            else:
                cell = f"{tt['mean_s']:.1f} s" + (f" ({tt['speedup']:.2f}x)" if tt["speedup"] else "")
                if tt.get("modelled_speedup"):
                    cell += f", modelled {tt['modelled_speedup']:.2f}x"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    targets = ", ".join(f"{k} = {100 * v:.2f} %" for k, v in summary["targets"].items())
    lines.append("")
    text = (f"Targets are multiples of {summary['baseline']}'s mean final error "
            f"({100 * summary['baseline_final_error']:.2f} %): {targets}. Wall-clock excludes evaluation. "
            f"Speedups are against {summary['baseline']}'s time to the same target.")
    if summary.get("costs"):
        text += (" 'Modelled' counts each run's backpropagated examples and selection forwards at "
                 "per-example costs measured in the report stage (train step / forward = "
                 + ", ".join(f"{c['ratio']:.2f}" for c in summary["costs"].values()) + ").")
    lines.append(text)
    split = []
    for label, m in summary["methods"].items():
        tot = sum(m["seconds"].values()) or 1.0
        split.append(f"| {label} | " + " | ".join(f"{100 * m['seconds'][p] / tot:.0f} %" for p in TIME_PHASES) + " |")
    lines += ["", "Time split of training wall-clock ('selection' is selection forwards of the live model):", "",
              "| method | " + " | ".join(TIME_PHASES) + " |", "|" + "---|" * (len(TIME_PHASES) + 1), *split]
    for method in METHODS.values():
        by_label = {label: m["method_figures"][method.name] for label, m in summary["methods"].items()
                    if method.name in m.get("method_figures", {})}
        if by_label:
            lines.append(method.report.markdown(by_label).rstrip("\n"))
    return "\n".join(lines) + "\n"


def method_plots(runs: List[Dict[str, Any]], out_dir: str | Path) -> List[str]:
    """Each method's own plot (e.g. AutoAssist's), for methods whose runs are present; returns
    the file names written."""
    names = []
    for method in METHODS.values():
        section = method.report
        if section is None or section.plot is None:
            continue
        if any(section.summarise([r]) is not None for r in runs):
            section.plot(runs, Path(out_dir) / section.plot_name)
            names.append(section.plot_name)
    return names


def plot(runs: List[Dict[str, Any]], path: str | Path, summary: Optional[Dict[str, Any]] = None) -> None:
    """PNG of test error against training wall-clock, one line per run, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: Dict[str, Any] = {}
    for r in runs:
        c = colours.setdefault(r["label"], f"C{len(colours)}")
        xs = [row["wall_s"] for row in r["curve"]]
        ys = [100 * row["test_error"] for row in r["curve"]]
        ax.plot(xs, ys, color=c, alpha=0.8, label=r["label"] if r["label"] not in ax.get_legend_handles_labels()[1] else None)
    if summary:
        for i, (k, v) in enumerate(summary["targets"].items()):
            ax.axhline(100 * v, color="grey", lw=0.8, ls=":")
            ax.text(0, 100 * v, f" {k}", va="bottom", fontsize=8, color="grey")
    ys_all = [100 * row["test_error"] for r in runs for row in r["curve"]]
    if ys_all:
        lo = min(ys_all)
        ax.set_ylim(max(0.0, lo * 0.9), min(100.0, max(lo * 2.5, lo + 5)))
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """Write a figure atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    plt.close(fig)


def clean_json(obj: Any) -> Any:
    """JSON-safe copy (NaN/inf become null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_json(v) for v in obj]
    return obj
