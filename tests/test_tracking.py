import json

import mlflow
import pytest

from selectkit.config import TrackingConfig
from selectkit.tracking import Tracker
from selectkit.train import Trainer

from conftest import tiny_train_cfg


def _run(run_id):
    return mlflow.MlflowClient().get_run(run_id)


def test_training_run_is_tracked(digits_store, tmp_path):
    cfg = tiny_train_cfg(epochs=2)
    tracker = Tracker(TrackingConfig(experiment="t-tracking", pipeline="unit"), stage="train", run_name="unit-train")
    with tracker.run({"train": {"epochs": 2, "lr": 0.1, "input": {"batch_size": 64}}}, tags={"selectkit.label": "x"}) as t:
        trainer = Trainer(digits_store, cfg, tracker=t)
        r = trainer.fit()
        t.finish(r.metrics, metrics_path=tmp_path / "metrics.json", curve=r.curve, curve_path=tmp_path / "curve.csv")
    run = _run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1" and run.data.params["train.input.batch_size"] == "64"
    assert run.data.tags["selectkit.pipeline"] == "unit" and run.data.tags["selectkit.stage"] == "train"
    assert "mlflow.source.git.commit" in run.data.tags
    client = mlflow.MlflowClient()
    hist = client.get_metric_history(tracker.run_id, "test/error")
    assert [m.step for m in hist] == [row["step"] for row in r.curve]
    assert [m.value for m in hist] == pytest.approx([row["test_error"] for row in r.curve])
    by_examples = client.get_metric_history(tracker.run_id, "test/error_by_examples")
    assert [m.step for m in by_examples] == [row["examples_seen"] for row in r.curve]
    assert len(client.get_metric_history(tracker.run_id, "train/loss")) == r.metrics["steps"] // cfg.log_every
    for phase in ("data", "forward", "backward", "optimizer", "evaluation", "other"):
        assert client.get_metric_history(tracker.run_id, f"time/{phase}_s")
    # the DVC metrics file tells the same story as MLflow
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert run.data.metrics["final/final_test_error"] == pytest.approx(metrics["final_test_error"])
    assert run.data.metrics["final/examples_backpropagated"] == metrics["examples_backpropagated"]
    assert (tmp_path / "curve.csv").read_text().splitlines()[0].startswith("step,epoch,wall_s")


def test_failure_marks_run_failed_with_traceback():
    tracker = Tracker(TrackingConfig(experiment="t-tracking"), stage="train")
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.run({"a": 1}):
            raise RuntimeError("boom")
    run = _run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"
    tb = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error/traceback.txt")
    assert "RuntimeError: boom" in tb and "Traceback" in tb


def test_interrupt_marks_run_killed():
    tracker = Tracker(TrackingConfig(experiment="t-tracking"), stage="train")
    with pytest.raises(KeyboardInterrupt):
        with tracker.run({}):
            raise KeyboardInterrupt("SIGTERM at step 3")
    assert _run(tracker.run_id).info.status == "KILLED"


def test_tracking_uri_from_params_wins(tmp_path, monkeypatch):
    from selectkit.tracking import resolve_uri

    assert resolve_uri(TrackingConfig(uri="http://example:5000")) == "http://example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert resolve_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    (tmp_path / "repo" / "pipelines" / "p").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "pipelines" / "p")
    assert resolve_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
