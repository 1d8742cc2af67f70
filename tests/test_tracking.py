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


# --- the tracking store is checked before a run opens ---------------------------------

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selectkit.preflight import HTTP_DEFAULTS, bound_http_stalls, check_tracking
from selectkit.validation import ConfigError


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spy_http(monkeypatch):
    """Record (max_retries, timeout) of every HTTP request the probe makes."""
    import mlflow.utils.rest_utils as rest

    calls, real = [], rest.http_request

    def spy(*args, **kwargs):
        calls.append((kwargs.get("max_retries"), kwargs.get("timeout")))
        return real(*args, **kwargs)

    monkeypatch.setattr(rest, "http_request", spy)
    return calls


def test_unreachable_server_fails_fast_naming_uri_origin_and_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    uri = f"http://127.0.0.1:{_closed_port()}"
    tracker = Tracker(TrackingConfig(uri=uri), stage="train")
    body_ran = False
    calls = _spy_http(monkeypatch)
    with pytest.raises(ConfigError) as e:
        with tracker.run({"a": 1}):
            body_ran = True
    assert calls == [(0, 5.0)]  # one request, no retries, a 5 s timeout: seconds, not MLflow's minutes
    assert not body_ran and tracker.run_id is None
    msg = str(e.value)
    assert "tracking.uri" in msg and "MLFLOW_TRACKING_URI" in msg
    assert uri in msg and "from params' tracking.uri" in msg and "Connection refused" in msg
    assert "start the server" in msg and f"remove it to use the default local store sqlite:///{tmp_path}" in msg


def test_unreachable_server_from_environment_names_the_variable(monkeypatch, tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    calls = _spy_http(monkeypatch)
    with pytest.raises(ConfigError, match="from the MLFLOW_TRACKING_URI environment variable") as e:
        check_tracking(TrackingConfig(), timeout=2)
    assert calls == [(0, 2)]
    assert "tracking.uri" in str(e.value) and f"unset it to use the default local store sqlite:///{tmp_path}" in str(e.value)
    # params' tracking.uri wins over the variable: removing it falls back to the variable
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match=f"remove it to use MLFLOW_TRACKING_URI=sqlite:///{tmp_path}"):
        check_tracking(TrackingConfig(uri=uri), timeout=2)


class _Server:
    """A local HTTP server answering every GET with ``status`` and ``body``."""

    def __init__(self, status, body):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self):
        return self.uri

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_check_accepts_an_mlflow_server_and_explains_other_answers():
    with _Server(404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment"}') as uri:
        assert check_tracking(TrackingConfig(uri=uri)) == uri
    with _Server(200, '{"experiment": {}}') as uri:
        assert check_tracking(TrackingConfig(uri=uri)) == uri
    with _Server(401, "{}") as uri:
        with pytest.raises(ConfigError, match="HTTP 401.*MLFLOW_TRACKING_TOKEN"):
            check_tracking(TrackingConfig(uri=uri))
    with _Server(404, "<html>not here</html>") as uri:
        with pytest.raises(ConfigError, match="not an MLflow tracking server"):
            check_tracking(TrackingConfig(uri=uri))
    with _Server(503, "{}") as uri:
        with pytest.raises(ConfigError, match="HTTP 503"):
            check_tracking(TrackingConfig(uri=uri))


def test_check_times_out_on_a_server_that_never_answers(monkeypatch):
    with socket.socket() as s:  # listens (the kernel completes the handshake) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        calls = _spy_http(monkeypatch)
        with pytest.raises(ConfigError, match="not reachable.*0.5 s timeout"):
            check_tracking(TrackingConfig(uri=uri), timeout=0.5)
        assert calls == [(0, 0.5)]  # one request, no retry


def test_sqlite_store_needs_an_existing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"directory {missing}, which does not exist.*tracking.uri"):
        check_tracking(TrackingConfig(uri=f"sqlite:///{missing / 'mlflow.db'}"))
    ok = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert check_tracking(TrackingConfig(uri=ok)) == ok
    assert check_tracking(TrackingConfig(uri="databricks")) == "databricks"  # unchecked scheme


def test_http_retries_bounded_unless_the_user_set_them(monkeypatch):
    for k in HTTP_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    bound_http_stalls()
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 300


# --- a resumed stage continues its run -------------------------------------------------


def test_resumed_stage_continues_the_same_run(caplog):
    cfg = TrackingConfig(experiment="t-resume")
    params = {"train": {"lr": 0.1, "epochs": 3}}
    first = Tracker(cfg, stage="train")
    with pytest.raises(KeyboardInterrupt):
        with first.run(params) as t:
            for step in (1, 2, 3):
                t.log({"loss": 1.0 / step}, step=step)
            t.flush()
            raise KeyboardInterrupt("SIGTERM at step 3")
    run_id = first.run_id
    assert _run(run_id).info.status == "KILLED"

    second = Tracker(cfg, stage="train")
    changed = {"train": {"lr": 0.1, "epochs": 4}, "extra": "new"}
    with caplog.at_level(logging.WARNING, logger="selectkit.tracking"):
        with second.run(changed, resume_run_id=run_id) as t:
            assert t.run_id == run_id
            for step in (3, 4):  # replayed from the checkpoint at step 2: step 3 is stored already
                t.log({"loss": 1.0 / step + 7}, step=step)
    assert "train.epochs" in caplog.text
    run = _run(run_id)
    assert run.info.status == "FINISHED"
    hist = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    assert [m.step for m in hist] == [1, 2, 3, 4]
    assert [m.value for m in hist] == pytest.approx([1.0, 0.5, 1 / 3, 0.25 + 7])
    assert run.data.params["train.epochs"] == "3" and run.data.params["extra"] == "new"
    assert run.data.tags["selectkit.params_changed_on_resume"] == "train.epochs"
    assert run.data.tags["selectkit.resumed"] == "1"
    assert "error" not in run.data.tags
    assert run.data.tags["selectkit.previous_error"] == "KeyboardInterrupt: SIGTERM at step 3"
    runs = mlflow.search_runs(experiment_names=["t-resume"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]

    with pytest.raises(RuntimeError):  # a second resumption that fails ends the same run FAILED
        with Tracker(cfg, stage="train").run(params, resume_run_id=run_id):
            raise RuntimeError("boom")
    run = _run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["selectkit.resumed"] == "2"
    assert run.data.tags["error"] == "RuntimeError: boom"


def test_resume_of_a_run_unknown_here_starts_a_linked_run(caplog):
    tracker = Tracker(TrackingConfig(experiment="t-resume-unknown"), stage="train")
    gone = "0123456789abcdef0123456789abcdef"
    with caplog.at_level(logging.WARNING, logger="selectkit.tracking"):
        with tracker.run({"a": 1}, resume_run_id=gone) as t:
            t.log({"loss": 1.0}, step=1)
    assert gone in caplog.text and "another tracking.uri" in caplog.text
    run = _run(tracker.run_id)
    assert tracker.run_id != gone and run.info.status == "FINISHED"
    assert run.data.tags["selectkit.resumed_from"] == gone and "selectkit.resumed" not in run.data.tags


# --- the trained model in MLflow's PyTorch flavour -------------------------------------


def _small_cnn():
    import torch

    from selectkit.models import ConvNet

    torch.manual_seed(0)
    return ConvNet((1, 8, 8), 10, (8, 16))


def test_log_model_loads_back_and_registers():
    import numpy as np
    import torch

    model = _small_cnn()
    x = torch.rand(4, 1, 8, 8)
    tracker = Tracker(TrackingConfig(experiment="t-model"), stage="train")
    with tracker.run({}) as t:
        info = t.log_model(model, registered_model_name="t-log-model", input_example=x[:2])
    assert model.training  # the logged copy is in eval mode; the model itself is untouched
    model.eval()
    loaded = mlflow.pytorch.load_model(f"runs:/{tracker.run_id}/model")
    assert not any(isinstance(p, torch.nn.Module) and type(p).__module__.startswith("selectkit")
                   for p in loaded.modules())  # a torch.export graph: loading needs no selectkit code
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)  # other batch size
    versions = mlflow.MlflowClient().search_model_versions("name='t-log-model'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == tracker.run_id
    assert mlflow.pytorch.load_model(info.model_uri) is not None


def test_log_model_pickles_what_torch_export_cannot_trace_and_is_a_noop_outside_a_run(caplog):
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else -self.lin(x)  # data-dependent: not exportable

    model = Branchy().eval()
    tracker = Tracker(TrackingConfig(experiment="t-model"), stage="train")
    assert tracker.log_model(model) is None  # no run open
    with tracker.run({}) as t:
        with caplog.at_level(logging.WARNING, logger="selectkit.tracking"):
            info = t.log_model(model, name="branchy", input_example=torch.ones(2, 3))
    assert "torch.export could not trace" in caplog.text
    assert tracker.log_model(model) is None  # the run has ended
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(mlflow.pytorch.load_model(info.model_uri)(x), model(x))


def test_disabled_tracking_opens_no_store_and_still_writes_the_dvc_files(digits_store, tmp_path):
    from selectkit.preflight import check_tracking

    dead = TrackingConfig(enabled=False, uri="http://127.0.0.1:9")  # never asked: nothing to check
    assert check_tracking(dead) == ""
    db = tmp_path / "mlflow.db"
    tracker = Tracker(TrackingConfig(enabled=False, uri=f"sqlite:///{db}"), stage="train")
    with tracker.run({"train": {"epochs": 1}}) as t:
        r = Trainer(digits_store, tiny_train_cfg(epochs=1), tracker=t).fit()
        assert t.log_model(r.model) is None
        t.finish(r.metrics, metrics_path=tmp_path / "metrics.json", curve=r.curve, curve_path=tmp_path / "curve.csv")
    assert tracker.run_id is None and not t._pending and not db.exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["final_test_error"] == r.metrics["final_test_error"]
    assert (tmp_path / "curve.csv").read_text().startswith("step,")
