"""Validation helpers shared by every typed config: params.yaml in, dataclasses out.

A params section is merged into ``OmegaConf.structured(<dataclass>)``, which rejects unknown
keys and wrong types; the dataclass's ``__post_init__`` then checks ranges. Every failure
becomes a ``ConfigError`` naming the key, the value and what is allowed. Method packages
(selectkit/methods/*) import only this module, so the core config can import the method
registry without a cycle.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

C = TypeVar("C")


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class UsageError(ValueError):
    """A path or argument given to a stage cannot be used (say which, and what to pass instead)."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError ``key=value is not allowed: expected <allowed>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def choice(key: str, value: Any, choices: List[str]) -> None:
    check(value in choices, key, value, f"one of {choices}")


def check_fold(section: str, fold: Any, mode: str) -> None:
    """``selection_fold``: true, false or auto; true only where BatchNorm uses running statistics."""
    check(isinstance(fold, bool) or fold == "auto", f"{section}.selection_fold", fold, "true, false or auto")
    check(not (fold is True and mode == "train"), f"{section}.selection_fold", fold,
          f"false or auto with {section}.selection_mode: train (BatchNorm normalises with the batch's "
          f"statistics there, which cannot be folded into the weights)")


def from_dict(cls: Type[C], values: Optional[Dict[str, Any]], section: str = "") -> C:
    """Validate a plain mapping against a config dataclass.

    Args:
        cls: the dataclass type.
        values: user values (e.g. one params.yaml section); None means all defaults.
        section: the section's name, used in messages.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: naming the offending key, its value and what is allowed.
    """
    prefix = f"{section}." if section else ""
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(values or {}))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = prefix + (getattr(e, "full_key", "") or "")
        first = str(e).splitlines()[0]
        if "not in" in first:
            allowed = [f.name for f in dataclasses.fields(cls)]
            raise ConfigError(f"unknown key {key!r} in params: {first}. Allowed keys of "
                              f"{section or cls.__name__}: {allowed}. Fix the spelling or remove it.") from None
        raise ConfigError(f"params key {key!r}: {first}") from None
    except ValueError as e:  # raised by __post_init__ of a nested dataclass
        raise ConfigError(str(e)) from None


def load_params(path: str | Path) -> Dict[str, Any]:
    """Read a params.yaml into a plain dict, with a clear error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"params file {p} not found: run from the pipeline's folder "
                                f"or pass --params PATH")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    out = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(out, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(out).__name__}")
    return out


def load_section(path: str | Path, section: str, cls: Type[C], **overrides: Any) -> C:
    """Load and validate one section of a params file, with command-line overrides on top."""
    params = load_params(path)
    values = params.get(section)
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"params section {section!r} must be a mapping, got {values!r}")
    values = dict(values or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, section)


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` on top of ``base``, merging nested mappings key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A config dataclass as a plain nested dict (for checkpoints and tracking)."""
    return dataclasses.asdict(cfg)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
