import csv
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

import selectkit.plots as plots
from selectkit.plots import fit_xlim, mean_band, plot
from selectkit.report import (clean_json, expand_runs, headline, load_run, machine_label, markdown, modelled_seconds,
                              summarise, time_to_error)

ROOT = Path(__file__).resolve().parents[1]

COSTS = {"train_per_example_s": 1e-4, "forward_per_example_s": 2.5e-5, "ratio": 4.0}
SECONDS = {"data": 1, "selection": 0, "forward": 3, "backward": 5, "optimizer": 1, "other": 0}


def _run(label, name, curve, final, costs=True):
    r = {"label": label, "name": name, "seed": 0, "final_test_error": final, "train_s": curve[-1]["wall_s"],
         "examples_forwarded": curve[-1]["examples_seen"], "examples_backpropagated": curve[-1]["examples_seen"],
         "seconds": SECONDS, "curve": curve}
    if costs:
        r["costs"] = COSTS
    return r


def _curve(points):
    return [{"wall_s": w, "test_error": e, "examples_seen": n, "sb/selection_forwarded": s} for w, e, n, s in points]


def test_time_to_error():
    c = _curve([(1, 0.3, 10, 0), (2, 0.2, 20, 0), (3, 0.1, 30, 0)])
    assert time_to_error(c, 0.2) == 2 and time_to_error(c, 0.05) is None


def test_expand_runs():
    params = {"seeds": [0, 1], "methods": ["a", "b"]}
    assert expand_runs(["runs/{method}-{seed}", "x"], params) == ["runs/a-0", "runs/a-1", "runs/b-0", "runs/b-1", "x"]
    assert expand_runs(["s/p-{proxy_seed}"], {"proxy_seeds": [3, 4]}) == ["s/p-3", "s/p-4"]
    with pytest.raises(ValueError, match=r"uses \{seed\} but params' seeds=None"):
        expand_runs(["r{seed}"], {})


def test_summary_speedups_measured_and_modelled():
    base = _run("traditional", "t0", _curve([(10, 0.20, 1000, 0), (20, 0.11, 2000, 0), (40, 0.10, 4000, 0)]), 0.10)
    fast = _run("sb", "s0", _curve([(5, 0.20, 300, 1000), (10, 0.105, 600, 2000), (20, 0.10, 1200, 4000)]), 0.10)
    never = _run("slow", "x0", _curve([(50, 0.5, 5000, 0)]), 0.5)
    # another method's selection forwards count too: the report knows no method by name
    assert modelled_seconds({"examples_seen": 600, "sb/selection_forwarded": 1000, "rho/selection_forwarded": 1000,
                             "aa/selection_forwarded": float("nan")}, COSTS) == pytest.approx(0.11)
    s = summarise([base, fast, never], "traditional", [1.1, 2.0], costs={"k": COSTS})
    t11 = s["methods"]["sb"]["time_to_target"]["1.1x"]
    assert s["targets"]["1.1x"] == pytest.approx(0.11)
    assert t11["mean_s"] == 10 and t11["speedup"] == pytest.approx(2.0)
    # modelled: traditional reaches 0.11 at 2000 examples = 0.2 s; sb at 600 bp + 2000 fwd = 0.11 s
    assert modelled_seconds({"examples_seen": 600, "sb/selection_forwarded": 2000}, COSTS) == pytest.approx(0.11)
    assert t11["modelled_speedup"] == pytest.approx(0.2 / 0.11)
    slow = s["methods"]["slow"]["time_to_target"]["1.1x"]
    assert slow["mean_s"] is None and slow["reached"] == 0
    table = markdown(s)
    assert "| not reached |" in table and "10.0 s (2.00x), modelled 1.82x" in table


def test_unknown_baseline():
    with pytest.raises(ValueError, match="report.baseline='trad' matches no run"):
        summarise([_run("traditional", "t", _curve([(1, 0.1, 1, 0)]), 0.1)], "trad", [1.1])


def test_method_sections_come_from_the_registry():
    counters = {"sb/candidates": 100.0, "sb/kept": 25.0, "sb/selection_forwarded": 100.0, "sb/stale_selected": 0.0,
                "sb/node_s": 0.5, "sb/selection_s": 1.0}
    base = _run("traditional", "t0", _curve([(10, 0.1, 100, 0)]), 0.1)
    sb = {**_run("sb", "s0", _curve([(10, 0.1, 25, 100)]), 0.1), "counters": counters}
    s = summarise([base, sb], "traditional", [1.1])
    assert s["methods"]["sb"]["method_figures"]["sb"]["kept_fraction"] == 0.25
    assert "method_figures" not in s["methods"]["traditional"]
    table = markdown(s)
    assert "Selective-Backprop" in table and "| sb | 25.0 % |" in table and "AutoAssist" not in table


# Fake run directories: traditional (3 seeds, seed 2 stalls and ends at 205 s where the others end
# at 60 s), sb (3 seeds, seed 2 never reaches the 1.1x target) and aa (one seed).
RUNS = {
    ("traditional", 0): ([10, 20, 30, 40, 50, 60], [0.30, 0.20, 0.15, 0.12, 0.110, 0.100], 1e4, 62.0),
    ("traditional", 1): ([10, 20, 30, 40, 50, 60], [0.30, 0.20, 0.15, 0.12, 0.112, 0.102], 1e4, 61.0),
    ("traditional", 2): ([10, 20, 30, 40, 50, 205], [0.30, 0.20, 0.15, 0.12, 0.114, 0.104], 1e4, 207.0),
    ("sb", 0): ([5, 10, 20, 30], [0.25, 0.15, 0.110, 0.105], 3e3, 31.0),
    ("sb", 1): ([5, 10, 20, 30], [0.25, 0.15, 0.110, 0.105], 3e3, 32.0),
    ("sb", 2): ([5, 10, 20, 30], [0.25, 0.16, 0.130, 0.120], 3e3, 30.0),
    ("aa", 0): ([5, 15, 25], [0.30, 0.20, 0.0827], 2e3, 52.1),
}


def _write_run(root, label, seed, walls, errors, per_point, train_s, cpu="AMD EPYC 7B13"):
    d = root / f"{label}-{seed}"
    d.mkdir(parents=True)
    n = per_point * len(walls)
    run = {"label": label, "seed": seed, "final_test_error": errors[-1], "train_s": train_s,
           "examples_forwarded": n, "examples_backpropagated": n, "seconds": SECONDS, "counters": {},
           "task": "image_classification", "model": {"name": "cnn", "args": {}}, "cpu": cpu, "device_name": cpu}
    (d / "run.json").write_text(json.dumps(run))
    with (d / "curve.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "wall_s", "examples_seen", "test_error", "sb/selection_forwarded"])
        for i, (t, e) in enumerate(zip(walls, errors)):
            w.writerow([i + 1, 0, t, per_point * (i + 1), e, "" if label != "sb" else 2 * per_point * (i + 1)])
    return d


@pytest.fixture
def run_dirs(tmp_path):
    return [_write_run(tmp_path / "runs", label, seed, *v) for (label, seed), v in RUNS.items()]


def test_load_run_reads_run_json_and_curve(run_dirs, tmp_path):
    r = load_run(run_dirs[0])
    assert r["name"] == "traditional-0" and r["label"] == "traditional" and r["cpu"] == "AMD EPYC 7B13"
    assert [row["wall_s"] for row in r["curve"]] == [10, 20, 30, 40, 50, 60]
    assert r["curve"][0]["examples_seen"] == 1e4 and r["curve"][0]["sb/selection_forwarded"] != r["curve"][0]["sb/selection_forwarded"]
    old = tmp_path / "old-run"  # a run from before run.json: the summary in metrics.json
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    (old / "curve.csv").write_text("wall_s,test_error\n1,0.5\n")
    with pytest.raises(FileNotFoundError, match=r"old-run/run.json not found.*metrics.json.*rerun its train stage"):
        load_run(old)
    (old / "run.json").write_text("{}")
    (old / "curve.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"old-run/curve.csv not found.*rerun its train stage"):
        load_run(old)


def test_machine_label():
    cpu = {"cpu": "AMD EPYC", "device_name": "AMD EPYC"}
    gpu = {"cpu": "AMD EPYC", "device_name": "NVIDIA H100"}
    assert machine_label([cpu, cpu]) == "AMD EPYC"
    assert machine_label([gpu]) == "AMD EPYC + NVIDIA H100"
    assert machine_label([cpu, gpu, cpu]) == "several machines: AMD EPYC; AMD EPYC + NVIDIA H100"
    assert machine_label([{}, {"cpu": None}]) == "unknown machine"
    assert machine_label([cpu, {}]) == "several machines: AMD EPYC; unknown machine"


def test_fit_xlim_cuts_a_stalled_run(run_dirs):
    runs = [load_run(d) for d in run_dirs]
    # medians of the methods' end points: traditional 60 (one seed at 205), sb 30, aa 25
    limit, beyond = fit_xlim(runs, "wall_s")
    assert limit == pytest.approx(1.15 * 60) and [r["name"] for r in beyond] == ["traditional-2"]
    # no stall: the last end point plus 2 %, nothing cut
    limit, beyond = fit_xlim([r for r in runs if r["name"] != "traditional-2"], "wall_s")
    assert limit == pytest.approx(1.02 * 60) and beyond == []
    limit, beyond = fit_xlim(runs, "examples_seen")
    assert limit == pytest.approx(1.02 * 6e4) and beyond == []
    with pytest.raises(ValueError, match="margin=0.9 should be >= 1"):
        fit_xlim(runs, margin=0.9)
    with pytest.raises(ValueError, match="no run has a curve point with 'nope'"):
        fit_xlim(runs, "nope")


def test_mean_band_on_the_range_every_seed_covers():
    a = {"curve": [{"wall_s": 0.0, "test_error": 0.2}, {"wall_s": 10.0, "test_error": 0.1}]}
    b = {"curve": [{"wall_s": 2.0, "test_error": 0.3}, {"wall_s": 8.0, "test_error": 0.1}]}
    grid, avg, lo, hi = mean_band([a, b], points=4)
    # a is 20 % at 0 s and 10 % at 10 s: 18 % at 2 s, 12 % at 8 s
    assert list(grid) == pytest.approx([2, 4, 6, 8])
    assert [avg[0], lo[0], hi[0]] == pytest.approx([24, 18, 30]) and [avg[-1], lo[-1], hi[-1]] == pytest.approx([11, 10, 12])
    c = {"curve": [{"wall_s": 20.0, "test_error": 0.1}, {"wall_s": 30.0, "test_error": 0.1}]}
    assert mean_band([a, c]) is None


def test_plot_two_panels_fitted_axis_marked_stall_and_title(run_dirs, tmp_path, monkeypatch):
    runs = [load_run(d) for d in run_dirs]
    summary = clean_json(summarise(runs, "traditional", [1.1]))
    figs = []
    save = plots.save_figure

    def keep(fig, path, dpi):
        figs.append((fig, [ax.get_xlim() for ax in fig.axes],
                     [[t.get_text() for t in ax.texts] for ax in fig.axes],
                     [t.get_text() for t in fig.axes[1].get_legend().get_texts()], fig.get_suptitle()))
        save(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", keep)
    plot(runs, tmp_path / "error_vs_time.png", summary)
    assert (tmp_path / "error_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, xlims, texts, legend, title = figs[0]
    assert len(fig.axes) == 2
    assert xlims[0] == pytest.approx((0, 69)) and xlims[1] == pytest.approx((0, 0.0612))  # examples in millions
    assert "traditional seed 2 ends at 205 s →" in texts[0]
    assert not any("ends at" in t for t in texts[1])
    assert sum(t == " 1.1x" for t in texts[0]) == 1 and sum(t == " 1.1x" for t in texts[1]) == 1  # target lines
    assert legend == ["traditional (3 seeds)", "sb (3 seeds)", "aa (1 seed)"]
    assert title == "Test error on image_classification, measured on AMD EPYC 7B13"


def test_markdown_single_seed_has_no_spread(run_dirs):
    runs = [load_run(d) for d in run_dirs]
    table = markdown(clean_json(summarise(runs, "traditional", [1.1])))
    rows = {}  # each method's row of the comparison table (the first table)
    for line in table.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert table.splitlines()[0] == "Measured on AMD EPYC 7B13."
    assert "| aa | 1 | 8.27 % | 52.1 |" in rows["aa"] and "±" not in rows["aa"]
    assert "| traditional | 3 | 10.20 ± 0.20 % | 110.0 ± 84.0 |" in rows["traditional"]
    assert "| not reached by 1 of 3 seeds |" in rows["sb"]
    assert "± 0.00" not in table


def test_headline_is_flat_small_and_numeric(run_dirs):
    runs = [load_run(d) for d in run_dirs]
    head = headline(clean_json(summarise(runs, "traditional", [1.1])))
    # traditional reaches 1.1 x 10.2 % at 50, 50 and 205 s; aa at 25 s; sb's seed 2 never does
    assert set(head) == {"traditional", "sb", "aa"}
    assert head["traditional"] == pytest.approx({"final_test_error": 0.102, "train_s": 110.0, "seeds": 3.0,
                                                 "examples_backpropagated": head["traditional"]["examples_backpropagated"]})
    assert head["sb"]["final_test_error"] == pytest.approx(0.11) and "speedup_1.1x" not in head["sb"]
    assert head["aa"]["speedup_1.1x"] == pytest.approx(305 / 3 / 25) and head["aa"]["seeds"] == 1.0
    head = headline(clean_json(summarise(runs, "traditional", [1.1, 1.2, 1.4])))
    for figures in head.values():
        assert len(figures) <= 9 and all(type(v) is float for v in figures.values())
    assert json.loads(json.dumps(head)) == head


def test_stage_writes_and_logs_the_report(run_dirs, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("report: {baseline: traditional, targets: [1.1], modelled: false}\n"
                      "tracking: {experiment: t-report-stage, pipeline: unit}\n")
    out = tmp_path / "report"
    subprocess.run([sys.executable, str(ROOT / "stages/report.py"), "--params", str(params), "--out", str(out),
                    "--runs", *map(str, run_dirs)], check=True, cwd=tmp_path, capture_output=True)
    names = {"summary.md", "summary.json", "curves.csv", "error_vs_time.png"}
    assert {p.name for p in out.iterdir()} == names | {"metrics"}
    summary = json.loads((out / "summary.json").read_text())
    assert {p.stem: json.loads(p.read_text()) for p in (out / "metrics").iterdir()} == headline(summary)
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "run,label,seed,wall_s,examples_seen,test_error" and len(curves) > len(run_dirs)
    assert "Measured on AMD EPYC 7B13." in (out / "summary.md").read_text()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("t-report-stage")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == names | {"metrics"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "metrics")} == {
        f"metrics/{label}.json" for label in headline(summary)}


def test_method_colours_stay_distinct_past_ten_methods():
    from selectkit.plots import method_colours

    labels = [f"m{i}" for i in range(20)]
    colours = method_colours(labels)
    assert len(set(colours.values())) == 20 and colours["m0"] == "C0"
