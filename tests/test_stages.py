"""Stage scripts as a user runs them (subprocesses, output not a terminal): they fail fast and
clearly before any work, print progress a person can watch, and end with the final error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]

PARAMS = """
train:
  model: {name: mlp, args: {hidden: [32]}}
  input: {batch_size: 64, prefetch: 1}
  epochs: 2
  eval_every: 10
  threads: 1
tracking: {experiment: EXPERIMENT, pipeline: stages-test}
"""


def stage(cwd, name, *args, env=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def params(tmp_path, request):
    experiment = f"stages-{request.node.name}"[:60]
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS.replace("EXPERIMENT", experiment))
    return p, experiment


def _runs(experiment):
    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    return mlflow.MlflowClient().search_runs([exp.experiment_id]) if exp else []


def test_train_prints_progress_lines_and_the_final_error(tmp_path, params, digits_store):
    p, experiment = params
    r = stage(tmp_path, "train", "--params", str(p), "--store", str(digits_store.root), "--out", "runs/t")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "train traditional seed 0: epoch" in ln]
    assert len(lines) >= 3, r.stderr  # one per evaluation (every 10 steps of 23 per epoch, and the end)
    assert "test error" in lines[0] and "examples/s" in lines[0] and "s of training left" in lines[0]
    last = r.stdout.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "runs/t/metrics.json").read_text())
    assert last.startswith(f"traditional seed 0: final test error {100 * metrics['final_test_error']:.2f} %"), last
    assert set(metrics) == {"final_test_error", "train_s", "examples_backpropagated", "kept_fraction", "epochs"}
    assert metrics["kept_fraction"] == pytest.approx(1.0, abs=0.05)  # the last partial batch is dropped
    run = json.loads((tmp_path / "runs/t/run.json").read_text())
    assert run["counters"] is not None and run["cpu"] and run["final_test_error"] == metrics["final_test_error"]


def _assert_user_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in last, last


def test_unwritable_out_or_checkpoint_fails_before_training(tmp_path, params, digits_store):
    p, experiment = params
    (tmp_path / "a-file").write_text("")
    base = ["--params", str(p), "--store", str(digits_store.root)]
    r = stage(tmp_path, "train", *base, "--out", "a-file/run")
    _assert_user_error(r, "--out a-file/run cannot be written", "a-file is a file")
    r = stage(tmp_path, "train", *base, "--out", "runs/t", "--checkpoint", "a-file/ck.pt")
    _assert_user_error(r, "--checkpoint a-file/ck.pt cannot be written", "--checkpoint <a writable file>")
    assert not (tmp_path / ".selectkit").exists() and _runs(experiment) == []  # no checkpoint, no MLflow run


def test_a_trained_model_as_resume_checkpoint_says_what_it_is(tmp_path, params, digits_store):
    p, experiment = params
    base = ["--params", str(p), "--store", str(digits_store.root)]
    assert stage(tmp_path, "train", *base, "--out", "runs/t").returncode == 0
    r = stage(tmp_path, "train", *base, "--out", "runs/u", "--resume", "runs/t/model.pt")
    _assert_user_error(r, "runs/t/model.pt is a trained model", ".selectkit/checkpoints/<run name>.pt")
    assert (tmp_path / "runs/t/model.pt").is_file() and not (tmp_path / ".selectkit/checkpoints/u.pt").exists()
    assert len(_runs(experiment)) == 1  # the failed stage opened no MLflow run


def test_unreachable_tracking_server_fails_within_seconds(tmp_path, params, digits_store):
    p, _ = params
    r = stage(tmp_path, "train", "--params", str(p), "--store", str(digits_store.root), "--out", "runs/t",
              env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    _assert_user_error(r, "http://127.0.0.1:9", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / ".selectkit").exists()  # failed before training: no checkpoint


def test_check_writable_refuses_the_wrong_kind_of_path(tmp_path):
    from selectkit.io import check_writable
    from selectkit.validation import UsageError

    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    check_writable(tmp_path / "d", "--out")
    check_writable(tmp_path / "new/deeper", "--out")
    check_writable(tmp_path / "d/ck.pt", "--checkpoint", kind="file")
    with pytest.raises(UsageError, match=r"--out .*/f is a file, but a directory is written there"):
        check_writable(tmp_path / "f", "--out")
    with pytest.raises(UsageError, match=r"--checkpoint .*/d is a directory, but a file is written there"):
        check_writable(tmp_path / "d", "--checkpoint", kind="file")
    with pytest.raises(UsageError, match=r"--out .*/f/run cannot be written: .*/f is a file"):
        check_writable(tmp_path / "f/run", "--out")


def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("selectkit_stage_check_test", ROOT / "stages/check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_validates_each_stage_command_with_its_own_parser(tmp_path, params, digits_store):
    p, _ = params
    check = _check_module()
    modules = {}
    train = f"python {ROOT}/stages/train.py --params {p} --store {digits_store.root}"
    assert check.check_command(f"{train} --out runs/t", tmp_path, modules) is None
    assert "does not parse" in check.check_command(f"{train} --out runs/t --bogus 1", tmp_path, modules)
    assert "--method 'nope' has no section method.nope" in check.check_command(
        f"{train} --out runs/t --method nope", tmp_path, modules)
    (tmp_path / "f").write_text("")
    assert "cannot be written" in check.check_command(f"{train} --out f/run", tmp_path, modules)
    assert check.check_command("bash -c 'echo hi'", tmp_path, modules) == check.NOT_CHECKED
    assert "not found" in check.check_command("python nowhere/stage.py --x 1", tmp_path, modules)
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".selectkit").exists()  # nothing written


def test_check_resolves_every_params_key_a_stage_declares(tmp_path):
    """DVC itself stops at a stage whose params key is missing, after the stages before it ran
    (and deleted their outputs): check finds it first, with the dot-in-a-name hint."""
    check = _check_module()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\nmethod:\n  svp-0.5: {label: svp}\n  ok: {}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  good:\n    cmd: echo good\n    params: [train, method.ok, train.lr]\n"
        "  bad:\n    cmd: echo bad\n    params: [train, method.svp-0.5]\n")
    assert check.missing_params(tmp_path / "dvc.yaml") == [
        ("bad", "params key 'method.svp-0.5' is not in params.yaml (DVC reads each dot as a level of nesting, "
                "so a name holding a dot, such as 'svp-0.5', cannot be a params key: rename it)")]
