"""Compare training runs: a markdown table, a JSON file with every figure, a few flat headline
numbers for DVC, and every run's curve in one CSV. Its pictures (test error against training
wall-clock and against examples backpropagated, BENCHMARK.md's protocol) are drawn by
selectkit.plots."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Optional, Sequence

from selectkit.methods import METHODS

TIME_PHASES = ("data", "selection", "forward", "backward", "optimizer", "other")
DIST_PHASES = ("sync", "idle")  # shown only when a run spent time there (several processes)
RUN_FILE = "run.json"  # a training run's full summary, written by stages/train.py
CURVE_FILE = "curve.csv"  # its evaluation points


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
    """A training stage's outputs: its full summary (``run.json``) plus the evaluation points
    (``curve.csv``) as ``run["curve"]``, and the directory's name as ``run["name"]``.

    Raises:
        FileNotFoundError: either file is missing (names it and the stage to rerun).
    """
    d = Path(run_dir)
    rpath, cpath = d / RUN_FILE, d / CURVE_FILE
    for p in (rpath, cpath):
        if not p.is_file():
            hint = (" (its metrics.json comes from a selectkit that kept the run's summary there)"
                    if p == rpath and (d / "metrics.json").is_file() else "")
            raise FileNotFoundError(f"{p} not found: {d} is not a finished training run{hint}; "
                                    f"rerun its train stage")
    run = json.loads(rpath.read_text())
    with cpath.open() as f:
        run["curve"] = [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
    run["name"] = d.name
    return run


def machine_label(runs: Sequence[Dict[str, Any]]) -> str:
    """The machine the runs were measured on: the CPU's name (``run["cpu"]``), with the device's
    (``run["device_name"]``) where it is another; every distinct one, in run order, where runs
    disagree; "unknown machine" for runs that record neither."""
    names: List[str] = []
    for r in runs:
        parts = list(dict.fromkeys(p for p in (r.get("cpu"), r.get("device_name")) if p))
        name = " + ".join(parts) or "unknown machine"
        if name not in names:
            names.append(name)
    if not names:
        return "unknown machine"
    return names[0] if len(names) == 1 else "several machines: " + "; ".join(names)


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
        # what the selection forwards ran as (not the timings "auto" measured them by)
        sel = {k: sel.get(k, False) for k in ("batch_size", "mode", "precision", "fold")}
        key = json.dumps([r["model"], r["task"], r["spec"], r["batch_size"], r["channels_last"], sel], sort_keys=True)
        if key not in measured:
            measured[key] = measure_costs(ModelConfig(r["model"]["name"], r["model"]["args"]), r["task"], r["spec"],
                                          r["num_classes"], r["batch_size"], sel["batch_size"], reps=reps,
                                          channels_last=r["channels_last"], selection_mode=sel["mode"],
                                          selection_precision=sel["precision"], selection_fold=bool(sel["fold"]))
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
    """Group runs by label; compute final error, wall-clock, counts, time split and time-to-target,
    and name the machine they were measured on (``machine_label``).

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
                           "costs": costs or {}, "machine": machine_label(runs)}
    for t in targets:
        out["targets"][f"{t:g}x"] = t * base_err
    for label, rs in labels.items():
        m: Dict[str, Any] = {
            "runs": [r["name"] for r in rs], "seeds": [r.get("seed") for r in rs],
            "final_test_error": _ms([r["final_test_error"] for r in rs]),
            "train_s": _ms([r["train_s"] for r in rs]),
            "examples_forwarded": _ms([r["examples_forwarded"] for r in rs]),
            "examples_backpropagated": _ms([r["examples_backpropagated"] for r in rs]),
            **({"kept_fraction": _ms([r["kept_fraction"] for r in rs])} if all("kept_fraction" in r for r in rs) else {}),
            "seconds": {p: mean(r["seconds"].get(p, 0.0) for r in rs) for p in TIME_PHASES + DIST_PHASES},
            # cached upstream stages (SVP proxies, an irreducible-loss model) each run consumed
            "upstream_s": mean(r.get("upstream_s", 0.0) for r in rs),
            "time_to_target": {},
        }
        for key, err in out["targets"].items():
            times = [time_to_error(r["curve"], err) for r in rs]
            reached = [x for x in times if x is not None]
            tt = {"mean_s": mean(reached) if len(reached) == len(times) else None,
                  "reached": len(reached), "of": len(times)}
            tt["end_to_end_s"] = None if tt["mean_s"] is None else tt["mean_s"] + m["upstream_s"]
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
            b, t = base["end_to_end_s"], tt["end_to_end_s"]
            tt["end_to_end_speedup"] = (b / t) if (b and t) else None
            if "modelled_s" in tt:
                b, t = base.get("modelled_s"), tt["modelled_s"]
                tt["modelled_speedup"] = (b / t) if (b and t) else None
    return out


def _modelled_time(run: Dict[str, Any], target: float) -> Optional[float]:
    for row in run["curve"]:
        if row["test_error"] <= target:
            return modelled_seconds(row, run["costs"])
    return None


def _spread(d: Dict[str, Any], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """A mean over seeds, "± std" added only where there are several seeds (one seed has no spread)."""
    if d["mean"] is None:  # a non-finite mean (a diverged run), nulled by clean_json
        return "n/a"
    text = f"{scale * d['mean']:.{digits}f}"
    if d["n"] > 1 and d["std"] is not None:
        text += f" ± {scale * d['std']:.{digits}f}"
    return text + unit


def _not_reached(tt: Dict[str, Any]) -> str:
    """The time-to-target cell of a method some of whose seeds never reached the target."""
    if tt["of"] == 1:
        return "not reached"
    return f"not reached by {tt['of'] - tt['reached']} of {tt['of']} seeds"


def markdown(summary: Dict[str, Any]) -> str:
    """The comparison table, one row per method, under a line naming the machine."""
    keys = list(summary["targets"])
    head = ["method", "seeds", "final test error", "train wall-clock (s)", "forwarded", "backpropagated"]
    head += [f"time to {k} (speedup)" for k in keys]
    lines = [f"Measured on {summary['machine']}.", ""] if summary.get("machine") else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in summary["methods"].items():
        cells = [label, str(m["final_test_error"]["n"]), _spread(m["final_test_error"], 100, 2, " %"),
                 _spread(m["train_s"], digits=1),
                 f"{m['examples_forwarded']['mean'] / 1e6:.3f} M", f"{m['examples_backpropagated']['mean'] / 1e6:.3f} M"]
        for k in keys:
            tt = m["time_to_target"][k]
            if tt["mean_s"] is None:
                cell = _not_reached(tt)
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
    phases = TIME_PHASES + tuple(p for p in DIST_PHASES
                                 if any(m["seconds"].get(p, 0.0) for m in summary["methods"].values()))
    for label, m in summary["methods"].items():
        tot = sum(m["seconds"].get(p, 0.0) for p in phases) or 1.0
        split.append(f"| {label} | " + " | ".join(f"{100 * m['seconds'].get(p, 0.0) / tot:.0f} %" for p in phases)
                     + " |")
    lines += ["", "Time split of training wall-clock ('selection' is selection forwards of the live model):", "",
              "| method | " + " | ".join(phases) + " |", "|" + "---|" * (len(phases) + 1), *split]
    lines += end_to_end_markdown(summary)
    for method in METHODS.values():
        by_label = {label: m["method_figures"][method.name] for label, m in summary["methods"].items()
                    if method.name in m.get("method_figures", {})}
        if by_label:
            lines.append(method.report.markdown(by_label).rstrip("\n"))
    return "\n".join(lines) + "\n"


def end_to_end_markdown(summary: Dict[str, Any]) -> List[str]:
    """Lines of the end-to-end table (time to each target plus the cached upstream stages each
    run consumed), or none when no method used any."""
    if not any(m.get("upstream_s") for m in summary["methods"].values()):
        return []
    keys = list(summary["targets"])
    lines = ["", "End to end: each run's time to target plus the cached upstream stages it consumed (SVP's proxy "
             "training and scoring, RHO-LOSS's irreducible-loss model), paid in full by one target; stages "
             "shared by several targets cost each of them less:", "",
             "| method | upstream | " + " | ".join(f"end to end to {k} (speedup)" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for label, m in summary["methods"].items():
        cells = [label, f"{m.get('upstream_s', 0.0):.1f} s"]
        for k in keys:
            tt = m["time_to_target"][k]
            if tt.get("end_to_end_s") is None:
                cells.append(_not_reached(tt))
            else:
                sp = tt.get("end_to_end_speedup")
                cells.append(f"{tt['end_to_end_s']:.1f} s" + (f" ({sp:.2f}x)" if sp else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline(summary: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """A few flat numbers per method for DVC (``dvc metrics show``/``diff``), one mapping per
    label (the report stage writes each as ``metrics/<label>.json``), under the same keys as a
    run's own ``metrics.json`` where they overlap, so runs and method means share columns:
    mean ``final_test_error`` (a fraction), ``train_s``, ``examples_backpropagated``,
    ``kept_fraction``, the number of ``seeds``, and the measured speedup at each target
    (``speedup_<target>``, e.g. ``speedup_1.1x``).

    A speedup is left out where the method did not reach the target on every seed, and for the
    baseline (1 by definition); a figure that is not finite (nulled by ``clean_json``) too.
    """
    out: Dict[str, Dict[str, float]] = {}
    for label, m in summary["methods"].items():
        row: Dict[str, float] = {}

        def put(key: str, value: Any) -> None:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                row[key] = float(value)

        for key in ("final_test_error", "train_s", "examples_backpropagated", "kept_fraction"):
            put(key, (m.get(key) or {}).get("mean"))
        put("seeds", m["final_test_error"]["n"])
        if label != summary["baseline"]:
            for key, tt in m["time_to_target"].items():
                put(f"speedup_{key}", tt.get("speedup"))
        out[label] = row
    return out


CURVE_COLUMNS = ("run", "label", "seed", "wall_s", "examples_seen", "test_error")


def write_curves(runs: Sequence[Dict[str, Any]], path: str | Path) -> None:
    """Every run's evaluation points in one long CSV (``run, label, seed, wall_s, examples_seen,
    test_error``): DVC's top-level plots draw it with one colour per method and one line per
    run (template .dvc/plots/selectkit_curves.json), so methods are overlaid in one chart."""
    from selectkit.tracking import write_csv

    rows = [{"run": r["name"], "label": r["label"], "seed": r.get("seed"), "wall_s": row["wall_s"],
             "examples_seen": row["examples_seen"], "test_error": row["test_error"]}
            for r in runs for row in r["curve"]]
    write_csv(path, rows)


def clean_json(obj: Any) -> Any:
    """JSON-safe copy (NaN/inf become null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_json(v) for v in obj]
    return obj
