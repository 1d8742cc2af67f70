"""Writing artifacts: atomically (a temporary name, then a rename) and only on the main process;
saving and loading trained models.

Every file selectkit writes goes through ``atomic_write`` or ``fresh_dir``/``replace_dir``:
readers see the old artifact or the new one, never half of one, and a crash keeps the old.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from selectkit.dist import is_main_process, rank

MODEL_FILE = "model.pt"


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it over ``path``.

    On processes other than the main one nothing is written.
    """
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | Path, what: str, fix: str = "", kind: str = "dir") -> None:
    """Fail now, before any work, when ``path`` (a directory, or with ``kind="file"`` a file,
    to be written later) cannot be written: an existing path must be of that kind, and its
    nearest existing ancestor a directory where a file can be created (tried for real:
    permission bits do not bind root, read-only mounts do).

    Raises:
        UsageError: naming ``what``, the path, the reason and ``fix``.
    """
    import tempfile

    from selectkit.validation import UsageError

    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, but a directory is written there{hint}")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{what} {path} is a directory, but a file is written there{hint}")
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {path} cannot be written: {probe} is a file, not a directory{hint}")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".selectkit-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be written: {e.strerror or e} in {probe}{hint}") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def fresh_dir(out: Path) -> Path:
    """An empty temporary sibling of ``out`` to write an artifact into before ``replace_dir``."""
    out = Path(out)
    tmp = out.with_name(out.name + (".tmp" if is_main_process() else f".tmp-rank{rank()}"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished ``tmp`` directory to ``out`` by renames: readers see the old or the new
    artifact, never half of one, and a crash before this keeps the old one. Other processes
    than the main one discard their copy."""
    if not is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def save_model(path: str | Path, model, *, model_sig: Dict[str, Any], task, config: Dict[str, Any]) -> None:
    """A trained model with what rebuilds it: its signature, the task and its example spec,
    the store fingerprint and the run's config."""
    import torch

    payload = {"model_sig": model_sig, "state_dict": model.state_dict(), "store_fingerprint": task.fingerprint,
               "task": task.name, "spec": task.spec_dict(), "config": config}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(run: str | Path, task, device=None) -> Tuple[Any, Dict[str, Any]]:
    """A trained model from a run directory (or its model.pt), rebuilt for ``task`` on ``device``.

    Returns:
        (model in eval mode, the saved payload without its weights).

    Raises:
        FileNotFoundError: no model there (names the stage to run).
        ValueError: a file that is not a selectkit model, or one trained on another store.
    """
    import torch

    from selectkit.config import ModelConfig
    from selectkit.models import build_model
    from selectkit.validation import UsageError

    p = Path(run)
    p = p / MODEL_FILE if p.is_dir() or not p.suffix else p
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run the train stage that writes it first")
    try:
        saved = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{p} is unreadable ({type(e).__name__}: {e}): rerun the train stage that wrote it") from None
    if not isinstance(saved, dict) or "model_sig" not in saved or "state_dict" not in saved:
        raise UsageError(f"{p} is not a model saved by selectkit (no model_sig/state_dict): pass a run "
                         f"directory written by stages/train.py")
    if saved["store_fingerprint"] != task.fingerprint:
        raise UsageError(f"model {p} was trained on store {saved['store_fingerprint']} but the store is "
                         f"{task.fingerprint}: rerun its train stage on this store")
    sig = saved["model_sig"]
    model = build_model(ModelConfig(sig["name"], sig["args"]), task.spec, task.num_classes)
    model.load_state_dict(saved["state_dict"])
    if device is not None:
        model = task.prepare_model(model, device)
    model.eval()
    return model, {k: v for k, v in saved.items() if k != "state_dict"}

