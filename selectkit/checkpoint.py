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
        FileNotFoundError / ValueError: missing, unreadable or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to "
                         f"start the run afresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != VERSION:
        raise ValueError(f"{path} is not a selectkit checkpoint of version {VERSION}; delete it to start afresh")
    return ckpt


def check_compatible(ckpt: Dict[str, Any], path: str | Path, model_sig: Dict[str, Any], fingerprint: str) -> None:
    """Raise a ValueError naming both sides when a checkpoint belongs to another model or store."""
    if ckpt["model_sig"] != model_sig:
        raise ValueError(f"checkpoint {path} holds model {ckpt['model_sig']} but this run builds "
                         f"{model_sig}: resume with the same train.model, or delete the checkpoint")
    if ckpt["store_fingerprint"] != fingerprint:
        raise ValueError(f"checkpoint {path} was trained on store {ckpt['store_fingerprint']} but this "
                         f"run's store is {fingerprint}: the data changed since; delete the checkpoint "
                         f"to train afresh on the new store")
