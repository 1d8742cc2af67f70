import pytest

from selectkit.report import expand_runs, markdown, modelled_seconds, summarise, time_to_error

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
    assert "not reached (0/1 seeds)" in table and "10.0 s (2.00x), modelled 1.82x" in table


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
