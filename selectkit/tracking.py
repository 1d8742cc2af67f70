"""One API for tracking: an MLflow run per stage execution, plus DVC metrics and plots files.

Metrics are buffered and sent with ``MlflowClient.log_batch(synchronous=False)`` at flush
points, so the training step only appends to a list: one ``log_metric`` call per value costs
milliseconds against SQLite. The same final figures go to ``metrics.json`` (DVC metrics) and
the same curve to a CSV (DVC plots), so ``dvc metrics show`` and MLflow agree.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from selectkit.config import TrackingConfig, flatten
from selectkit.dist import is_main_process
from selectkit.io import atomic_write_text

log = logging.getLogger(__name__)

_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def project_root() -> Path:
    """The DVC repo root: ``DVC_ROOT`` when run by DVC, else the nearest folder above the
    working directory holding ``.dvc/``, else the working directory. Every pipeline of a
    repo, and stage scripts run by hand, thus share one ``mlflow.db``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if (d / ".dvc").is_dir()), cwd)


def resolve_uri(cfg: TrackingConfig) -> str:
    """params' tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def git_commit(cwd: Optional[Path] = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def write_csv(path: str | Path, rows: Sequence[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
        w = csv.DictWriter(buf, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class Tracker:
    """Tracks one stage execution. Use as ``with Tracker(...).run(params) as t: ...``.

    Args:
        cfg: tracking config (URI, experiment, pipeline tag).
        stage: the stage kind (prepare, train, report, ...), a tag.
        run_name: the run's name; defaults to the DVC stage name ($DVC_STAGE) or ``stage``.
    """

    def __init__(self, cfg: TrackingConfig, stage: str, run_name: Optional[str] = None):
        self.cfg = cfg
        self.stage = stage
        self.dvc_stage = os.environ.get("DVC_STAGE", "")
        self.run_name = run_name or self.dvc_stage or stage
        self.uri = resolve_uri(cfg)
        self.run_id: Optional[str] = None
        self._client = None
        self._pending: List[Any] = []
        self._ops: List[Any] = []

    @contextmanager
    def run(self, params: Dict[str, Any], tags: Optional[Dict[str, str]] = None) -> Iterator["Tracker"]:
        """Open the MLflow run; an escaping exception ends it FAILED (KILLED on Ctrl-C/SIGTERM)
        with the traceback attached as ``error/traceback.txt`` and the ``error`` tag. On
        processes other than the main one nothing is tracked (every call is a no-op)."""
        if not is_main_process():
            yield self
            return
        import mlflow
        from mlflow.entities import RunStatus

        mlflow.set_tracking_uri(self.uri)
        self._client = mlflow.MlflowClient(self.uri)
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            loc = (project_root() / "mlartifacts").as_uri() if self.uri.startswith("sqlite") else None
            exp_id = self._client.create_experiment(self.cfg.experiment, artifact_location=loc)
        else:
            exp_id = exp.experiment_id
        all_tags = {"selectkit.pipeline": self.cfg.pipeline, "selectkit.stage": self.stage,
                    "dvc.stage": self.dvc_stage, "mlflow.source.git.commit": git_commit(),
                    **(tags or {})}
        with mlflow.start_run(experiment_id=exp_id, run_name=self.run_name, tags=all_tags) as run:
            self.run_id = run.info.run_id
            flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i:i + 100]))
            try:
                yield self
                self.flush(wait=True)
            except BaseException as e:
                try:
                    self.flush(wait=True)
                    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                    mlflow.log_text(tb, "error/traceback.txt")
                    mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
                    if isinstance(e, KeyboardInterrupt):
                        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
                except Exception:  # tracking must never hide the original error
                    log.exception("could not record the failure in MLflow")
                raise

    def log(self, metrics: Dict[str, float], step: int, timestamp_ms: Optional[int] = None) -> None:
        """Buffer metric values at ``step`` (sent at the next flush)."""
        if not is_main_process():
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        self._pending.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items())

    def flush(self, wait: bool = False) -> None:
        """Send buffered metrics asynchronously; with ``wait``, block until MLflow stored them."""
        if self._client is None or self.run_id is None:
            return
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), _MAX_BATCH):
            op = self._client.log_batch(self.run_id, metrics=pending[i:i + _MAX_BATCH], synchronous=False)
            if op is not None:
                self._ops.append(op)
        if wait:
            for op in self._ops:
                op.wait()
            self._ops = []

    def log_artifact(self, path: str | Path) -> None:
        if self.run_id is None:
            return
        import mlflow

        mlflow.log_artifact(str(path))

    def finish(self, metrics: Dict[str, Any], metrics_path: Optional[str | Path] = None,
               curve: Optional[Sequence[Dict[str, Any]]] = None, curve_path: Optional[str | Path] = None) -> None:
        """Record final figures in MLflow (as summary metrics) and the DVC metrics/plots files."""
        import mlflow

        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.flush(wait=True)
        if numeric and self.run_id is not None:
            mlflow.log_metrics({f"final/{k}": v for k, v in numeric.items()})
        if metrics_path is not None:
            atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if curve_path is not None and curve is not None:
            write_csv(curve_path, list(curve))
