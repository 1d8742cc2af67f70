"""Checkpoints: written atomically, checked against the model and store they are loaded into."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from selectkit.io import atomic_write

VERSION = 1


def save_checkpoint(path: str | Path, state: Dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write leaves the old checkpoint."""
    atomic_write(path, lambda tmp: torch.save({"version": VERSION, **state}, tmp))


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """Load a checkpoint's dict (on the CPU).

    Raises:
        FileNotFoundError: no file there.
        UsageError: a file that is not a training checkpoint (a trained model.pt, an
            unreadable file, another format version): says what it is and what to pass.
    """
    from selectkit.validation import UsageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass a checkpoint written by stages/train.py "
                                f"(by default .selectkit/checkpoints/<run name>.pt), or --resume auto")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}): it is not a file "
                         f"selectkit wrote, or it was cut short; pass another checkpoint, or --resume never "
                         f"to train afresh") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "model_sig" in ckpt and "optimizer" not in ckpt:
        raise UsageError(f"{path} is a trained model (the model.pt a finished train stage writes), not a "
                         f"training checkpoint: it has no optimizer or input-graph state to resume from. "
                         f"Pass the run's checkpoint (by default .selectkit/checkpoints/<run name>.pt), or "
                         f"--resume auto; to use the model itself, load it with selectkit.io.load_model")
    if not isinstance(ckpt, dict) or ckpt.get("version") != VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UsageError(f"{path} is not a selectkit training checkpoint of version {VERSION} (found "
                         f"{found!r}): pass a checkpoint written by this version's stages/train.py, or "
                         f"--resume never to train afresh")
    return ckpt


def check_compatible(ckpt: Dict[str, Any], path: str | Path, model_sig: Dict[str, Any], fingerprint: str) -> None:
    """Raise a UsageError naming both sides when a checkpoint belongs to another model or store."""
    from selectkit.validation import UsageError

    if ckpt["model_sig"] != model_sig:
        raise UsageError(f"checkpoint {path} holds model {ckpt['model_sig']} but this run builds "
                         f"{model_sig}: resume with the same train.model, or delete the checkpoint")
    if ckpt["store_fingerprint"] != fingerprint:
        raise UsageError(f"checkpoint {path} was trained on store {ckpt['store_fingerprint']} but this "
                         f"run's store is {fingerprint}: the data changed since; delete the checkpoint "
                         f"to train afresh on the new store")
