"""One API for tracking: an MLflow run per stage execution, plus DVC metrics and plots files.

Metrics are buffered and sent with ``MlflowClient.log_batch(synchronous=False)`` at flush
points, so the training step only appends to a list: one ``log_metric`` call per value costs
milliseconds against SQLite. The same final figures go to ``metrics.json`` (DVC metrics) and
the same curve to a CSV (DVC plots), so ``dvc metrics show`` and MLflow agree.

A run first checks its tracking store (``selectkit.preflight.check_tracking``): an unreachable
server fails the stage within seconds with a message naming the URI, where it came from and the
fix, instead of stalling in MLflow's retries. A resumed training stage reopens its interrupted
run, so one MLflow run holds the whole history.
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


def default_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def resolve_uri(cfg: TrackingConfig) -> str:
    """params' tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


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


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


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
        self._floor: Dict[str, int] = {}  # on a reopened run: last stored step of each metric

    def _on(self) -> bool:
        """Whether this process tracks: the main process, with ``tracking.enabled``."""
        return self.cfg.enabled and is_main_process()

    @contextmanager
    def run(self, params: Dict[str, Any], tags: Optional[Dict[str, str]] = None,
            resume_run_id: Optional[str] = None) -> Iterator["Tracker"]:
        """Open the MLflow run; an escaping exception ends it FAILED (KILLED on Ctrl-C/SIGTERM)
        with the traceback attached as ``error/traceback.txt`` and the ``error`` tag. On
        processes other than the main one, and with ``tracking.enabled: false``, nothing is
        tracked (every call is a no-op; ``finish`` still writes the DVC files).

        The store is checked first (``check_tracking``), so a dead server fails within seconds.

        Args:
            params: the stage's config, logged flattened (``train.lr``).
            tags: extra run tags.
            resume_run_id: the ``run_id`` of an interrupted execution of this stage (kept in
                its checkpoint). If this store holds that run, it is reopened: metric history
                continues (values at steps it already holds are dropped, as the resumed stage
                replays from its checkpoint), params it already holds are kept, and the tag
                ``selectkit.resumed`` counts the resumptions. Otherwise a new run starts,
                tagged ``selectkit.resumed_from``.
        """
        if not self._on():
            yield self
            return
        import mlflow
        from mlflow.entities import RunStatus

        from selectkit.preflight import bound_http_stalls, check_tracking  # here: preflight imports this module

        bound_http_stalls()
        self.uri = check_tracking(self.cfg)
        mlflow.set_tracking_uri(self.uri)
        self._client = mlflow.MlflowClient(self.uri)
        self._floor = {}
        all_tags = {"selectkit.pipeline": self.cfg.pipeline, "selectkit.stage": self.stage,
                    "dvc.stage": self.dvc_stage, "mlflow.source.git.commit": git_commit(),
                    **(tags or {})}
        previous = self._resumable(resume_run_id, all_tags)
        if previous is None:
            active = mlflow.start_run(experiment_id=self._experiment_id(), run_name=self.run_name, tags=all_tags)
        else:
            active = mlflow.start_run(run_id=previous.info.run_id, run_name=self.run_name, tags=all_tags)
        with active as run:
            self.run_id = run.info.run_id
            if previous is not None:
                self._reopened(previous)
            self._log_params(params, previous)
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

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        loc = (project_root() / "mlartifacts").as_uri() if self.uri.startswith("sqlite") else None
        return self._client.create_experiment(self.cfg.experiment, artifact_location=loc)

    def _resumable(self, run_id: Optional[str], tags: Dict[str, str]):
        """The run to reopen, or None; adds the resumption tags to ``tags``."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning("run %s to resume is not in tracking store %s (another tracking.uri?): "
                        "starting a new run tagged selectkit.resumed_from=%s", run_id, self.uri, run_id)
            tags["selectkit.resumed_from"] = run_id
            return None
        count = run.data.tags.get("selectkit.resumed", "0")
        tags["selectkit.resumed"] = str(int(count) + 1 if count.isdigit() else 1)
        if "error" in run.data.tags:  # the interruption is history now; FINISHED runs carry no error tag
            tags["selectkit.previous_error"] = run.data.tags["error"]
        return run

    def _reopened(self, previous) -> None:
        """Drop the stale error tag; note the last step of each metric already stored."""
        if "error" in previous.data.tags:
            self._client.delete_tag(self.run_id, "error")
        # a run's latest value of each metric is the one at its largest step (then timestamp)
        self._floor = {m.key: m.step for m in previous.data.to_proto().metrics}

    def _log_params(self, params: Dict[str, Any], previous) -> None:
        """Log ``params`` flattened; on a reopened run only those it lacks (params are write-once),
        warning about and tagging any whose value changed."""
        import mlflow

        flat = {k: str("null" if v is None else v) for k, v in flatten(params).items()}
        held = previous.data.params if previous is not None else {}
        changed = sorted(k for k, v in flat.items() if k in held and held[k] != v)
        if changed:
            log.warning("resumed run %s keeps its logged values of params that changed since: %s",
                        self.run_id, ", ".join(changed))
            mlflow.set_tag("selectkit.params_changed_on_resume", ",".join(changed)[:5000])
        items = [(k, v) for k, v in flat.items() if k not in held]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))

    def log(self, metrics: Dict[str, float], step: int, timestamp_ms: Optional[int] = None) -> None:
        """Buffer metric values at ``step`` (sent at the next flush); on a reopened run, values
        at steps the run already holds for that metric are dropped."""
        if not self._on():
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        step, floor = int(step), self._floor
        self._pending.extend(Metric(k, float(v), ts, step) for k, v in metrics.items()
                             if k not in floor or step > floor[k])

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

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """Attach a file to the run (under the folder ``artifact_path`` when given)."""
        if self.run_id is None:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, model, name: str = "model", registered_model_name: Optional[str] = None,
                  input_example=None):
        """Log ``model`` with MLflow's PyTorch flavour, so ``mlflow.pytorch.load_model`` and the
        model registry work; register it as a new version of ``registered_model_name`` if given.

        With ``input_example`` (a batch as ``forward`` takes it, tensor or array; a batch of 2 or
        more keeps the batch size free) the model is saved as a ``torch.export`` graph (pt2:
        loading runs no pickled code and needs no selectkit); a model ``torch.export`` cannot
        trace, or no example, is pickled instead (loading needs selectkit's classes importable).
        A CPU copy in eval mode is logged; ``model`` is left as it is.

        Returns:
            MLflow's ``ModelInfo`` (``.model_uri`` loads it), or None when no run of this
            tracker is open (and on processes other than the main one).
        """
        if self.run_id is None:
            return None
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            return None
        import copy

        import mlflow.pytorch
        import torch
        from mlflow.exceptions import MlflowException

        net = copy.deepcopy(getattr(model, "_orig_mod", model)).cpu().eval()  # unwrap torch.compile
        # explicit requirements: MLflow's inference imports the model in a subprocess (~10 s)
        kwargs = dict(name=name, registered_model_name=registered_model_name,
                      pip_requirements=mlflow.pytorch.get_default_pip_requirements())
        if input_example is not None:
            if isinstance(input_example, torch.Tensor):
                input_example = input_example.detach().cpu().numpy()
            try:
                return mlflow.pytorch.log_model(net, input_example=input_example, serialization_format="pt2", **kwargs)
            except MlflowException:
                raise
            except Exception as e:  # torch.export cannot trace it
                log.warning("torch.export could not trace the model (%s: %s); logging it pickled",
                            type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
        # MLflow warns on every pickled model that unpickling runs code: true of any file from an
        # untrusted source, not news for a model this run just trained; once per stage is noise.
        quiet = _DropMessage("Saving pytorch model by Pickle")
        logging.getLogger("mlflow.pytorch").addFilter(quiet)
        try:
            return mlflow.pytorch.log_model(net, input_example=input_example, serialization_format="pickle", **kwargs)
        finally:
            logging.getLogger("mlflow.pytorch").removeFilter(quiet)

    def finish(self, metrics: Dict[str, Any], metrics_path: Optional[str | Path] = None,
               curve: Optional[Sequence[Dict[str, Any]]] = None, curve_path: Optional[str | Path] = None) -> None:
        """Record final figures in MLflow (as summary metrics) and the DVC metrics/plots files."""
        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.flush(wait=True)
        if numeric and self.run_id is not None:
            import mlflow

            mlflow.log_metrics({f"final/{k}": v for k, v in numeric.items()})
        if metrics_path is not None:
            atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if curve_path is not None and curve is not None:
            write_csv(curve_path, list(curve))
