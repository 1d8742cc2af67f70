"""Checks that run before any work: the tracking store a stage will write to is usable, and
MLflow's HTTP retries are bounded.

An unreachable server fails the stage within seconds with a message naming the URI, where it
came from and the fix, instead of stalling in MLflow's retries. ``Tracker.run`` runs both checks
before it opens a run; a stage may call ``check_tracking`` earlier, before it loads any data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from selectkit.config import TrackingConfig
from selectkit.tracking import default_uri, resolve_uri
from selectkit.validation import ConfigError

# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) stall a run ~4 minutes
# on a dead server; these bound a stall to seconds (refused) or about a minute (hung).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def bound_http_stalls() -> None:
    """Set MLflow's HTTP retry and timeout variables to ``HTTP_DEFAULTS`` where the user has not."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


def _origin_and_fix(cfg: TrackingConfig) -> tuple[str, str]:
    """Where the tracking URI came from, and how to pick another one."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if cfg.uri:
        then = f"MLFLOW_TRACKING_URI={env}" if env else f"the default local store {default_uri()}"
        return ("from params' tracking.uri, which overrides MLFLOW_TRACKING_URI",
                f"correct tracking.uri in params.yaml, or remove it to use {then}")
    if env:
        return ("from the MLFLOW_TRACKING_URI environment variable; params set no tracking.uri",
                f"correct MLFLOW_TRACKING_URI, or unset it to use the default local store {default_uri()}")
    return ("the default local store: neither params' tracking.uri nor MLFLOW_TRACKING_URI is set",
            "set tracking.uri in params.yaml (or MLFLOW_TRACKING_URI) to a store you can write")


def _short_reason(e: BaseException) -> str:
    """'[Errno 111] Connection refused' out of the nested requests/urllib3 message."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if m:
        return m.group(0).strip()
    if "timed out" in text.lower() or "timeout" in type(e.__cause__ or e).__name__.lower():
        return "no answer within the timeout"
    return text.splitlines()[0][:300] if text else type(e).__name__


def _http_problem(uri: str, experiment: str, timeout: float) -> Optional[str]:
    """One request, no retries, the same credentials and TLS settings MLflow's client uses:
    what is wrong with the server at ``uri``, or None."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    endpoint = "/api/2.0/mlflow/experiments/get-by-name"
    try:
        r = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, backoff_factor=0,
                         timeout=timeout, raise_on_status=False, params={"experiment_name": experiment})
    except Exception as e:
        return f"is not reachable ({_short_reason(e)} on GET {uri.rstrip('/')}{endpoint}, {timeout:g} s timeout)"
    if r.status_code in (401, 403):
        return (f"refused the request (HTTP {r.status_code}): set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, to credentials it accepts")
    if r.status_code >= 500:
        return f"answered HTTP {r.status_code} (server error); check the server's log"
    try:  # 200, or an MLflow error such as RESOURCE_DOES_NOT_EXIST: an MLflow server
        ok = r.status_code == 200 or "error_code" in r.json()
    except ValueError:
        ok = False
    return None if ok else (f"answered HTTP {r.status_code} to {endpoint}, which is not an MLflow "
                            f"tracking server's answer (wrong port or path?)")


def _sqlite_problem(uri: str) -> Optional[str]:
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    if not db or db == ":memory:":
        return None
    path = Path(db).resolve()
    if not path.parent.is_dir():
        return f"needs the directory {path.parent}, which does not exist (create it)"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"needs {path.parent} and {path.name} there writable by this user"
    return None


def check_tracking(cfg: TrackingConfig, timeout: float = 5.0) -> str:
    """The tracking URI (see ``resolve_uri``), once checked usable ("" with tracking disabled).

    An http(s) server gets one request with ``timeout`` seconds and no retries; a SQLite store's
    directory must exist and be writable. Other schemes are returned unchecked.

    Raises:
        ConfigError: naming the URI, where it came from (params' ``tracking.uri``, the
            ``MLFLOW_TRACKING_URI`` environment variable or the default) and the fix.
    """
    if not cfg.enabled:
        return ""  # tracking.enabled: false: no store to check
    uri = resolve_uri(cfg)
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        problem = _http_problem(uri, cfg.experiment, timeout)
        fix = "start the server, "
    elif scheme == "sqlite":
        problem, fix = _sqlite_problem(uri), ""
    else:
        return uri
    if problem:
        origin, other = _origin_and_fix(cfg)
        raise ConfigError(f"MLflow tracking store {uri} ({origin}) {problem}. Fix: {fix}{other}.")
    return uri
