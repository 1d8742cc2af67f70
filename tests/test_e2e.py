"""End to end: the default pipeline's dvc.yaml and stages on tiny params in a temporary git repo."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

TINY_PARAMS = """
data:
  source: digits
seeds: [0]
train:
  model: {{name: mlp, args: {{hidden: [32]}}}}
  lr: 0.1
  input: {{batch_size: 64, prefetch: 1}}
  epochs: 2
  eval_every: 10
  threads: 1
proxy_archs: [small]
proxy_seeds: [0]
proxy:
  epochs: 1
  input: {{batch_size: 64, prefetch: 1}}
  eval_every: 0
  threads: 1
proxy_models:
  small: {{model: {{name: mlp, args: {{hidden: [16]}}}}}}
score:
  batch_size: 500
choose:
  metric: entropy
  rule: single
svp_kinds: [svp]  # the random baseline runs in the SVP pipeline's test
svp_fractions: [0.5]
svp_seeds: [0]
tracking:
  experiment: {experiment}
  pipeline: e2e
report:
  baseline: traditional
"""


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("DVC_ROOT", None)
    return env


def sh(cwd, *cmd, check=True, env=None):
    r = subprocess.run(list(cmd), cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "repo"
    d.mkdir()
    for name in ("stages", "selectkit"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", d / ".gitignore")
    experiment = f"e2e-{uuid.uuid4().hex[:8]}"
    (d / "params.yaml").write_text(TINY_PARAMS.format(experiment=experiment))
    sh(d, "git", "init", "-q")
    sh(d, "git", "config", "user.email", "ci@example.com")
    sh(d, "git", "config", "user.name", "ci")
    sh(d, "dvc", "init", "-q")
    sh(d, "dvc", "config", "--local", "core.analytics", "false")
    sh(d, "dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "dvc-site-cache"))
    shutil.copy(ROOT / ".dvcignore", d / ".dvcignore")
    shutil.copytree(ROOT / ".dvc/plots", d / ".dvc/plots")
    return d, experiment


def _wait_for(condition, limit_s=120.0, poll_s=0.1):
    """Poll ``condition`` until it holds; a bound against hangs, not a timing assertion."""
    end = time.monotonic() + limit_s
    while not condition() and time.monotonic() < end:
        time.sleep(poll_s)


def _runs(experiment):
    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id]) if exp else []
    return sorted(runs, key=lambda r: r.info.start_time)


def _by_stage(runs):
    out = {}
    for r in runs:
        out.setdefault(r.data.tags["selectkit.stage"], []).append(r)
    return out


@pytest.mark.cost(150)
def test_dvc_repro_then_exp_run_reruns_only_what_changed(repo):
    d, experiment = repo
    sh(d, "dvc", "repro")
    for p in ("data/store/meta.json", "results/runs/traditional-0/model.pt", "results/runs/traditional-0/metrics.json",
              "results/runs/traditional-0/run.json", "results/runs/traditional-0/curve.csv", "results/report/summary.md",
              "results/report/summary.json", "results/report/error_vs_time.png", "results/report/metrics/traditional.json",
              "results/report/curves.csv"):
        assert (d / p).is_file(), p
    assert not any((d / p).exists() for p in ("runs", "scores", "subsets", "target_scores", "report"))
    runs = _by_stage(_runs(experiment))
    # train: Traditional, the proxy, the SVP target; score: the proxy and the all-data target
    assert {k: len(v) for k, v in runs.items()} == {"prepare": 1, "train": 3, "score": 2, "choose": 1, "report": 1}
    assert all(r.info.status == "FINISHED" for v in runs.values() for r in v)
    train = [r for r in runs["train"] if r.data.tags["dvc.stage"] == "train@0"][0]
    assert train.data.tags["selectkit.pipeline"] == "e2e"
    metrics = json.loads((d / "results/runs/traditional-0/metrics.json").read_text())
    assert set(metrics) == {"final_test_error", "train_s", "examples_backpropagated", "kept_fraction", "epochs"}
    assert train.data.metrics["final/final_test_error"] == pytest.approx(metrics["final_test_error"])
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(f"runs:/{train.info.run_id}/model")  # the trained model, logged
    assert sum(p.numel() for p in model.parameters()) > 0
    summary = json.loads((d / "results/report/summary.json").read_text())
    assert summary["methods"]["traditional"]["final_test_error"]["mean"] == pytest.approx(metrics["final_test_error"])
    assert set(summary["methods"]) == {"traditional", "svp-0.5"}
    assert set(summary["svp"]["spearman_with_target"]) == {"results/runs/proxy-small-0", "ensemble (rank sum)"}
    sub = json.loads((d / "results/subsets/svp-0.5/subset.json").read_text())
    assert sub["rule"] == "single" and sub["proxies"][0]["proxy_run"] == "results/runs/proxy-small-0"
    m = json.loads((d / "results/runs/svp-0.5-0/metrics.json").read_text())
    assert m["examples_backpropagated"] == 2 * sub["size"] and m["kept_fraction"] == pytest.approx(sub["size"] / 1438)
    shown = sh(d, "dvc", "metrics", "show")
    assert "failed to load" not in shown.stdout + shown.stderr
    table = shown.stdout.splitlines()
    assert len(table) == 1 + 3 + 2 and max(map(len, table)) < 200, shown.stdout  # 3 runs, 2 method means
    assert "results/report/metrics/svp-0.5.json" in shown.stdout and "costs" not in shown.stdout
    plots = json.loads(sh(d, "dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    chart = plots["data"]["test error against training wall-clock"][0]["content"]
    assert chart["encoding"]["color"]["field"] == "label"  # one chart, methods overlaid
    assert {row["label"] for row in chart["data"]["values"]} == {"traditional", "svp-0.5"}

    # a second repro does nothing
    sh(d, "dvc", "repro")
    assert "up to date" in sh(d, "dvc", "status").stdout
    assert len(_runs(experiment)) == 8  # the check stage opens no MLflow run

    # an experiment changing the target's learning rate: run for Traditional's training alone here
    # (each stage costs ~10 s of imports), then what the whole experiment would rerun: its other
    # trainings (on the subsets), the all-data target's scores and the report; never prepare,
    # proxy, score, choose
    sh(d, "git", "add", "-A")
    sh(d, "git", "commit", "-qm", "baseline")
    out = sh(d, "dvc", "exp", "run", "-S", "train.lr=0.05", "train@0").stdout
    assert sorted(re.findall(r"Running stage '([^']+)'", out)) == ["check", "train@0"], out
    runs = _by_stage(_runs(experiment))
    assert {k: len(v) for k, v in runs.items()} == {"prepare": 1, "train": 4, "score": 2, "choose": 1, "report": 1}
    assert runs["train"][-1].data.params["train.lr"] == "0.05"
    out = sh(d, "dvc", "repro", "--dry").stdout
    ran = sorted(re.findall(r"Running stage '([^']+)'", out))
    assert ran == ["report", "score_full", "svp_target@0-svp-0.5"], out


@pytest.mark.cost(45)
def test_failures_under_dvc_repro_lose_nothing(repo):
    """DVC deletes a stage's outputs before running it. A params mistake fails in the `check`
    stage, before any stage runs: the last results stay in place. A failure inside a stage
    (here an unreachable tracking server, found within seconds) loses nothing either:
    `dvc checkout` brings every output back, metrics and curve included."""
    d, _ = repo
    sh(d, "dvc", "repro", "train@0")
    run = d / "results/runs/traditional-0"
    files = ("model.pt", "metrics.json", "run.json", "curve.csv")
    before = {f: (run / f).read_bytes() for f in files}
    good = (d / "params.yaml").read_text()

    (d / "params.yaml").write_text(good.replace("  lr: 0.1\n", "  lr: fast\n"))
    r = sh(d, "dvc", "repro", "train@0", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "train@0, svp_target@0-svp-0.5: params key 'train.lr'" in out, out
    assert "Running stage 'train@0'" not in out and "Traceback" not in out
    assert {f: (run / f).read_bytes() for f in files} == before

    (d / "params.yaml").write_text(good)
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    r = sh(d, "dvc", "repro", "--force", "--single-item", "train@0", check=False, env=env)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "MLFLOW_TRACKING_URI" in out and "Traceback" not in out, out
    assert not (run / "metrics.json").exists()  # DVC deleted the outputs before running the stage
    sh(d, "dvc", "checkout", "train@0")
    assert {f: (run / f).read_bytes() for f in files} == before


@pytest.mark.cost(25)
def test_selectkit_edit_marks_importing_stage_changed(repo):
    """Every stage depends on the whole selectkit package: editing a module it imports changes it."""
    d, _ = repo
    sh(d, "dvc", "repro", "prepare")

    def status():
        return json.loads(sh(d, "dvc", "status", "--json", "prepare").stdout)

    assert status() == {}
    (d / "selectkit/__pycache__").mkdir(exist_ok=True)  # bytecode is not code (.dvcignore)
    (d / "selectkit/__pycache__/stray.cpython-311.pyc").write_bytes(b"\0")
    assert status() == {}
    with open(d / "selectkit/store/__init__.py", "a") as f:  # stages/prepare.py imports selectkit.store
        f.write("# an edit\n")
    assert status() == {"prepare": [{"changed deps": {"selectkit": "modified"}}]}


@pytest.mark.cost(25)
def test_sigterm_keeps_checkpoint_and_rerun_resumes(repo, digits_store):
    d, experiment = repo
    params = (d / "params.yaml").read_text().replace("epochs: 2", "epochs: 400").replace(
        "eval_every: 10", "eval_every: 0\n  checkpoint_every: 20")
    (d / "params.yaml").write_text(params)
    args = [sys.executable, "stages/train.py", "--store", str(digits_store.root), "--out", "runs/t", "--seed", "0"]
    proc = subprocess.Popen(args, cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = d / ".selectkit/checkpoints/t.pt"
    _wait_for(lambda: ckpt.exists() or proc.poll() is not None)
    assert ckpt.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "SIGTERM at step" in out
    assert not (d / "runs/t/metrics.json").exists() and not (d / "runs/t/model.pt").exists()
    from selectkit.checkpoint import read_checkpoint

    state = read_checkpoint(ckpt)
    assert not state["complete"] and state["step"] > 0
    killed = [r for r in _runs(experiment) if r.data.tags["selectkit.stage"] == "train"]
    assert killed[-1].info.status == "KILLED"

    # rerun with fewer epochs would be another config; rerun the same config and stop it quickly
    # by resuming: it must start from the saved step, not from zero.
    proc = subprocess.Popen(args, cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: proc.poll() is not None or read_checkpoint(ckpt)["step"] > state["step"])
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert f"resumed from .selectkit/checkpoints/t.pt at step {state['step']}" in out, out
    assert proc.returncode == 130
    # the resumed stage continued the same MLflow run (its id is in the checkpoint)
    train = [r for r in _runs(experiment) if r.data.tags["selectkit.stage"] == "train"]
    assert [r.info.run_id for r in train] == [killed[-1].info.run_id] == [read_checkpoint(ckpt)["tracking_run_id"]]
    assert train[0].data.tags["selectkit.resumed"] == "1"


ONLINE_TINY = """
data:
  source: digits
  holdout_fraction: 0.1
seeds: [0]
methods: [traditional, sb, stale-sb, autoassist-proxy, autoassist-sb, rholoss, svp-half]
train:
  model: {{name: cnn, args: {{channels: [8, 16]}}}}
  input: {{batch_size: 64, prefetch: 1}}
  epochs: 4
  eval_every: 0
  eval_every_s: 0.05
  threads: 1
method:
  traditional: {{methods: {{}}}}
  sb: {{methods: {{sb: {{beta: 2.0, selection_batch_size: 64}}}}}}
  stale-sb: {{methods: {{sb: {{beta: 2.0, selection_batch_size: 64, staleness: 3}}}}}}
  autoassist-sb: {{label: autoassist+sb, methods: {{sb: {{beta: 2.0, selection_batch_size: 64, window: 1024}},
                  autoassist: {{features: data/features, accuracy_ema: 0.2, worker: process}}}}}}
  autoassist-proxy: {{label: autoassist-proxy, methods: {{autoassist: {{features: data/features-proxy,
                                                                       accuracy_ema: 0.2, worker: inline}}}}}}
  rholoss: {{methods: {{rholoss: {{irreducible: data/irreducible, fraction: 0.5, selection_batch_size: 128}}}}}}
  svp-half: {{input: {{subset: data/subsets/svp-0.5}}, label: svp-0.5}}
  irreducible: {{methods: {{}}, input: {{split: holdout}}, epochs: 3, label: irreducible-loss-model}}
  proxy: {{model: {{name: mlp, args: {{hidden: [16]}}}}, epochs: 1, label: proxy}}
score: {{batch_size: 500, embeddings: true}}
choose: {{metric: entropy, rule: single, fraction: 0.5}}
tracking:                      # MLflow is tested by the default pipeline's test; off here saves
  enabled: false               # about 5 s per stage (its import, store and run)
  experiment: {experiment}
  pipeline: online-e2e
report:
  baseline: traditional
  cost_reps: 2
"""


@pytest.mark.cost(140)
def test_online_pipeline_runs_every_policy(repo):
    d, experiment = repo
    p = d / "pipelines/online-fashion-mnist"
    p.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines/online-fashion-mnist/dvc.yaml", p / "dvc.yaml")
    (p / "params.yaml").write_text(ONLINE_TINY.format(experiment=experiment))
    sh(d, "dvc", "repro", "pipelines/online-fashion-mnist/dvc.yaml")
    held = np.load(p / "data/store/holdout_ids.npy")
    n = 1438 - len(held)  # digits train split less the holdout
    assert _runs(experiment) == [] and not (d / "mlflow.db").exists()  # tracking.enabled: false
    assert abs(len(held) - 0.1 * 1438) <= 10 * 0.5  # stratified: each of 10 classes rounds its own share
    for method in ("traditional", "sb", "stale-sb"):
        m = json.loads((p / f"runs/{method}-0/run.json").read_text())
        assert m["label"] == method and m["final_test_error"] < 0.5
        if method == "traditional":
            assert m["examples_backpropagated"] == 4 * n
        else:
            c = m["counters"]
            assert c["sb/candidates"] == 4 * n and m["examples_backpropagated"] == c["sb/kept"] < 2 * n
            assert c["sb/selection_forwarded"] == (4 * n if method == "sb" else 2 * n)
    # the gate on pixel features (data/features) runs under SB with a spawned worker, the one on
    # the proxy's scores and embeddings (data/features-proxy) alone, learning inline; the thread
    # worker is tested in test_autoassist.py (each train stage here costs ~7 s, mostly imports)
    for method in ("autoassist-proxy", "autoassist-sb"):
        m = json.loads((p / f"runs/{method}-0/run.json").read_text())
        c = m["counters"]
        assert c["aa/candidates"] == 4 * n and c["aa/updates"] > 0
        # the inline gate learns synchronously: what it rejects does not depend on how busy the
        # cores are; autoassist+sb's spawned worker starts late, so it may pass everything
        assert c["aa/passed"] < 4 * n or method == "autoassist-sb"
        if method != "autoassist-sb":
            assert m["examples_forwarded"] == m["examples_backpropagated"] == c["aa/passed"]
        else:  # rejected ids never reach SB: it scores only what the gate passed
            assert c["sb/candidates"] == c["sb/selection_forwarded"] == c["aa/passed"]
    curve = (p / "runs/autoassist-proxy-0/curve.csv").read_text().splitlines()[0]
    assert "aa/accuracy" in curve and "aa/safeguard_rate" in curve
    # RHO-LOSS: the irreducible-loss model trained on the holdout only, and its cost is counted
    il = json.loads((p / "runs/irreducible/run.json").read_text())
    assert il["examples_backpropagated"] == 3 * len(held)
    m = json.loads((p / "runs/rholoss-0/run.json").read_text())
    c = m["counters"]
    assert c["rho/candidates"] == c["rho/selection_forwarded"] == 4 * n
    from selectkit.methods.rholoss.functions import keep_count

    per_epoch = sum(keep_count(min(128, n - i), 0.5) for i in range(0, n, 128))
    assert m["examples_backpropagated"] == c["rho/kept"] == 4 * per_epoch
    assert m["upstream_s"] > il["train_s"] > 0
    svp = json.loads((p / "runs/svp-half-0/run.json").read_text())
    ids = np.load(p / "data/subsets/svp-0.5/ids.npy")
    assert len(ids) == round(0.5 * n) and not np.isin(ids, held).any()
    assert svp["examples_backpropagated"] == 4 * len(ids) and svp["upstream_s"] > 0
    summary = json.loads((p / "report/summary.json").read_text())
    assert set(summary["methods"]) == {"traditional", "sb", "stale-sb", "autoassist-proxy", "autoassist+sb",
                                       "rholoss", "svp-0.5"}
    # the gate on the proxy's uncertainty scores and embeddings (16 columns: no reduction)
    feats = json.loads((p / "data/features-proxy/features.json").read_text())
    assert feats["kind"] == "proxy embeddings" and feats["dim"] == 4 + 16
    aa = json.loads((p / "runs/autoassist-proxy-0/run.json").read_text())
    assert aa["upstream_s"] > feats["proxy_train_s"] > 0 and 0 < aa["counters"]["aa/auc"] <= 1
    assert summary["costs"] and 0 < summary["methods"]["autoassist-proxy"]["method_figures"]["autoassist"]["pass_rate"] < 1
    text = (p / "report/summary.md").read_text()
    assert "stale-sb" in text and "safeguard rate" in text and (p / "report/autoassist.png").is_file()
    assert "RHO-LOSS" in text and "End to end" in text

    # changing an SB knob invalidates only the sb stage (the report follows once its runs change)
    sh(d, "git", "add", "-A")
    sh(d, "git", "commit", "-qm", "online")
    params = (p / "params.yaml").read_text().replace("sb: {beta: 2.0, selection_batch_size: 64}}}",
                                                     "sb: {beta: 1.0, selection_batch_size: 64}}}")
    (p / "params.yaml").write_text(params)
    status = json.loads(sh(d, "dvc", "status", "--json", "pipelines/online-fashion-mnist/dvc.yaml").stdout)
    assert [k.split(":")[-1] for k in status] == ["check", "train@0-sb"]  # check: params.yaml changed
    # a RHO-LOSS knob reruns only its target: the irreducible-loss model and its scores stay cached
    (p / "params.yaml").write_text(params.replace("fraction: 0.5, selection_batch_size: 128",
                                                  "fraction: 0.25, selection_batch_size: 128"))
    status = json.loads(sh(d, "dvc", "status", "--json", "pipelines/online-fashion-mnist/dvc.yaml").stdout)
    assert [k.split(":")[-1] for k in status] == ["check", "train@0-sb", "train@0-rholoss"]


SVP_TINY = """
data:
  source: digits
proxy_archs: [wide, narrow]
proxy_seeds: [0]
seeds: [0]
kinds: [svp, random]
fractions: [0.5]
proxy:
  epochs: 1
  input: {{batch_size: 64, prefetch: 1}}
  eval_every: 0
  threads: 1
proxy_models:
  wide: {{model: {{name: mlp, args: {{hidden: [32]}}}}}}
  narrow: {{model: {{name: mlp, args: {{hidden: [8]}}}}}}
score:
  batch_size: 500
  embeddings: true
choose:
  metric: entropy
  rule: rank_sum
target:
  model: {{name: mlp, args: {{hidden: [32]}}}}
  lr: 0.1
  input: {{batch_size: 64, prefetch: 1}}
  epochs: 2
  eval_every: 5
  threads: 1
tracking:                      # off: see ONLINE_TINY
  enabled: false
  experiment: {experiment}
  pipeline: svp-e2e
report:
  baseline: full
  targets: [1.1, 1.2]
  modelled: false
"""


@pytest.mark.cost(100)
def test_svp_pipeline_then_target_change_reruns_only_targets(repo, tmp_path):
    """The SVP pipeline end to end; then a team's workflow through a DVC remote: push, a second
    clone pulls the store, proxies, scores and subsets, and a target change there would rerun only
    the targets (no proxy, score or choose stage)."""
    d, experiment = repo
    p = d / "pipelines/svp-fashion-mnist"
    p.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines/svp-fashion-mnist/dvc.yaml", p / "dvc.yaml")
    (p / "params.yaml").write_text(SVP_TINY.format(experiment=experiment))
    out = sh(d, "dvc", "repro", "pipelines/svp-fashion-mnist/dvc.yaml").stdout
    for stage in ("proxy@wide-0", "proxy@narrow-0", "score@wide-0", "score@narrow-0", "choose@svp-0.5", "choose@random-0.5",
                  "target@0-svp-0.5", "target@0-random-0.5", "full@0", "score_full", "report"):
        assert f"dvc.yaml:{stage}'" in out, stage
    sub = json.loads((p / "subsets/svp-0.5/subset.json").read_text())
    assert sub["rule"] == "rank_sum" and len(sub["proxies"]) == 2 and sub["size"] == 719
    m = json.loads((p / "runs/target-svp-0.5-0/run.json").read_text())
    assert m["examples_backpropagated"] == 2 * 719 and m["label"] == "svp-0.5"
    summary = json.loads((p / "report/summary.json").read_text())
    assert set(summary["methods"]) == {"full", "svp-0.5", "random-0.5"}
    svp = summary["svp"]
    assert set(svp["spearman_with_target"]) == {"runs/proxy-wide-0", "runs/proxy-narrow-0", "ensemble (rank sum)"}
    assert [p["model"]["args"]["hidden"] for p in sub["proxies"]] == [[32], [8]]
    with np.load(p / "scores/proxy-narrow-0/scores.npz") as z:
        assert z["embeddings"].shape == (1438, 8)
    assert all(-1 <= v <= 1 for v in svp["spearman_with_target"].values()) and svp["selection_cost_s"] > 0
    assert sum(svp["class_share"]["svp-0.5"]) == pytest.approx(1.0)
    assert "Spearman" in (p / "report/summary.md").read_text()

    sh(d, "git", "add", "-A")
    sh(d, "git", "commit", "-qm", "svp")
    # share through a DVC remote (a local directory here; S3, GCS or SSH for a team), in git
    sh(d, "dvc", "remote", "add", "-d", "team", str(tmp_path / "dvc-remote"))
    sh(d, "git", "commit", "-qm", "dvc remote", ".dvc/config")
    sh(d, "dvc", "push", "pipelines/svp-fashion-mnist/dvc.yaml")
    # a second clone, configured as the fixture configures DVC
    c = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(d), str(c))
    sh(c, "dvc", "config", "--local", "core.analytics", "false")
    sh(c, "dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "dvc-site-cache-clone"))
    q = c / "pipelines/svp-fashion-mnist"
    assert not (q / "data").exists() and not (q / "subsets/svp-0.5").exists()  # gitignored: from the remote
    sh(c, "dvc", "pull", "pipelines/svp-fashion-mnist/dvc.yaml")  # not the unrun top-level dvc.yaml's outputs
    assert (q / "subsets/svp-0.5/ids.npy").read_bytes() == (p / "subsets/svp-0.5/ids.npy").read_bytes()
    (q / "params.yaml").write_text((q / "params.yaml").read_text().replace("  lr: 0.1\n  input: {batch_size: 64, prefetch: 1}\n  epochs: 2",
                                                                           "  lr: 0.05\n  input: {batch_size: 64, prefetch: 1}\n  epochs: 2"))
    # --dry: what would run, without the ~10 s per stage of running it (DVC's own downstream rule
    # then reruns score_full and the report after full@0; the default pipeline's test runs an experiment)
    out = sh(c, "dvc", "repro", "--dry", "pipelines/svp-fashion-mnist/dvc.yaml").stdout
    ran = sorted(re.findall(r"Running stage '[^']*dvc\.yaml:([^']+)'", out))
    assert ran == ["check", "full@0", "target@0-random-0.5", "target@0-svp-0.5"], out


TEXT_TINY = """
data:
  source: text
  path: texts.jsonl
  vocab_size: 200
  min_frequency: 1
  max_length: 16
  holdout_fraction: 0.1
seeds: [0]
methods: [traditional, sb, autoassist, rholoss, svp-50]
kinds: [svp]
fractions: [0.5]
train:
  model: {{name: textcnn, args: {{dim: 16, channels: 16}}}}
  optimizer: adam
  lr: 0.01
  weight_decay: 0.0
  input: {{batch_size: 32, prefetch: 1, group_by_length: 4}}
  epochs: 2
  eval_every: 0
  eval_every_s: 0.05
  threads: 1
method:
  traditional: {{methods: {{}}}}
  sb: {{methods: {{sb: {{beta: 2.0, selection_batch_size: 32}}}}}}
  autoassist: {{methods: {{autoassist: {{features: data/features, accuracy_ema: 0.2, worker: inline}}}}}}
  rholoss: {{methods: {{rholoss: {{irreducible: data/irreducible, fraction: 0.5, selection_batch_size: 64}}}}}}
  svp-50: {{input: {{subset: data/subsets/svp-0.5}}, label: svp-0.5}}
  proxy: {{model: {{name: fasttext, args: {{dim: 8, buckets: 64}}}}, epochs: 1, label: proxy}}
  irreducible: {{model: {{name: fasttext, args: {{dim: 8, buckets: 64}}}}, input: {{split: holdout}}, epochs: 1,
                label: irreducible-loss-model}}
score: {{batch_size: 100}}
choose: {{metric: entropy, rule: single}}
tracking:                      # off: see ONLINE_TINY
  enabled: false
  experiment: {experiment}
  pipeline: text-e2e
report:
  baseline: traditional
  cost_reps: 2
"""


@pytest.mark.cost(105)
def test_text_pipeline_runs_svp_sb_autoassist_and_rholoss(repo):
    """The text pipeline's dvc.yaml on the tests' own tiny texts (JSON Lines): tokenise (with a
    holdout), TF-IDF features, a fastText proxy -> scores -> an SVP subset, a fastText
    irreducible-loss model on the holdout -> its scores, and a 1-D CNN target under Traditional,
    SB, AutoAssist, RHO-LOSS and on the subset; then the report (kept small: the suite's time budget; the
    random baseline's comparison is tested in test_svp.py)."""
    from conftest import text_rows

    d, experiment = repo
    p = d / "pipelines/text-wordnet"
    p.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines/text-wordnet/dvc.yaml", p / "dvc.yaml")
    (p / "params.yaml").write_text(TEXT_TINY.format(experiment=experiment))
    (p / "texts.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in text_rows(300)))
    sh(d, "dvc", "repro", "pipelines/text-wordnet/dvc.yaml")
    meta = json.loads((p / "data/store/meta.json").read_text())
    assert meta["task"] == "text_classification" and meta["splits"]["train"]["size"] == 240
    held = np.load(p / "data/store/holdout_ids.npy")
    n = 240 - len(held)  # what every method trains on
    assert meta["holdout"]["size"] == len(held) > 0
    feats = json.loads((p / "data/features/features.json").read_text())
    assert feats["kind"] == "tf-idf" and feats["rows"] == 240
    trad = json.loads((p / "runs/traditional-0/run.json").read_text())
    assert trad["examples_backpropagated"] == 2 * n and trad["final_test_error"] < 0.6 and trad["task"] == meta["task"]
    sb = json.loads((p / "runs/sb-0/run.json").read_text())["counters"]
    assert sb["sb/candidates"] == sb["sb/selection_forwarded"] == 2 * n and sb["sb/kept"] < 2 * n
    aa = json.loads((p / "runs/autoassist-0/run.json").read_text())["counters"]
    assert aa["aa/candidates"] == 2 * n and aa["aa/updates"] > 0
    il = json.loads((p / "runs/irreducible/run.json").read_text())
    assert il["examples_backpropagated"] == len(held)
    rho = json.loads((p / "runs/rholoss-0/run.json").read_text())
    assert rho["counters"]["rho/candidates"] == 2 * n and rho["examples_backpropagated"] == rho["counters"]["rho/kept"] < 2 * n
    assert rho["upstream_s"] > il["train_s"] > 0
    ids = np.load(p / "data/subsets/svp-0.5/ids.npy")
    m = json.loads((p / "runs/svp-50-0/run.json").read_text())
    assert len(ids) == round(0.5 * n) and not np.isin(ids, held).any()
    assert m["examples_backpropagated"] == 2 * len(ids) and m["label"] == "svp-0.5"
    summary = json.loads((p / "report/summary.json").read_text())
    assert set(summary["methods"]) == {"traditional", "sb", "autoassist", "rholoss", "svp-0.5"}
    assert -1 <= summary["svp"]["spearman_with_target"]["runs/proxy"] <= 1
    assert summary["costs"] and "Spearman" in (p / "report/summary.md").read_text()
