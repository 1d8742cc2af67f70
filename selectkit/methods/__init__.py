"""The method registry: one line per method package. Adding a method is a new folder under
selectkit/methods/ exporting ``METHOD`` plus one line here (or ``register(METHOD)`` from the
user's own package); config, graph, trainer and report reach methods only through it."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

from selectkit.methods.base import SLOT_ORDER, SLOTS, Method, MethodContext, ReportSection
from selectkit.validation import ConfigError, from_dict

MethodStack = List[Tuple[Method, Any]]
METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its name must be new)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get(name: str) -> Method:
    """The registered method ``name``, or a ConfigError listing the registered ones."""
    if name not in METHODS:
        raise ConfigError(f"train.methods names {name!r}, which is not a registered method: registered "
                          f"are {sorted(METHODS)}. Fix the name, or register your method (README, "
                          f"'Extending selectkit')")
    return METHODS[name]


def _foreign_keys(method: Method, values: Dict[str, Any], section: str) -> None:
    """A key that is not this method's but is another's: say where it belongs."""
    own = {f.name for f in dataclasses.fields(method.config)}
    for key in values:
        if key in own:
            continue
        owners = sorted(m.name for m in METHODS.values()
                        if m is not method and key in {f.name for f in dataclasses.fields(m.config)})
        if owners:
            raise ConfigError(f"{section}.{method.name}.{key}: {key!r} is not a key of method {method.name!r} "
                              f"but of {owners}: move it to {section}.{owners[0]}.{key} (keys of "
                              f"{method.name}: {sorted(own)})")


def parse_stack(values: Any, section: str = "train.methods") -> Dict[str, Any]:
    """Validate a ``methods`` mapping: name -> the method's typed config, in stack order.

    Stack order is slot order (ids, batches, weight), then the order given. Each method's
    params are validated by its own dataclass; configs already typed pass through.

    Raises:
        ConfigError: an unknown method (lists the registered ones), a method that runs as DVC
            stages, a key that belongs to another method, two methods claiming an exclusive
            slot, or a value its config rejects.
    """
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must map method names to their params, e.g. {{sb: {{beta: 2.0}}}}; "
                          f"got {values!r}")
    parsed: Dict[str, Any] = {}
    for name, params in values.items():
        method = get(name)
        if method.slot == "stages":
            raise ConfigError(f"{section}.{name}: {name} runs as DVC stages before training, not in a "
                              f"training run's stack; train on its subset with input.subset")
        if isinstance(params, method.config):
            parsed[name] = params
            continue
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{section}.{name} must be a mapping of {name}'s params (or {{}}), got {params!r}")
        _foreign_keys(method, params or {}, section)
        parsed[name] = from_dict(method.config, params or {}, f"{section}.{name}")
    by_slot: Dict[str, List[str]] = {}
    for name in parsed:
        by_slot.setdefault(METHODS[name].slot, []).append(name)
    for slot, names in by_slot.items():
        if len(names) > 1 and any(METHODS[n].exclusive for n in names):
            raise ConfigError(f"{section}: methods {names} all claim the {slot!r} slot ({SLOTS[slot]}), "
                              f"which {[n for n in names if METHODS[n].exclusive]} cannot share: keep one")
    order = {s: i for i, s in enumerate(SLOT_ORDER)}
    names = sorted(parsed, key=lambda n: order[METHODS[n].slot])  # stable: given order within a slot
    return {n: parsed[n] for n in names}


def stack_of(methods: Dict[str, Any]) -> MethodStack:
    """(Method, config) pairs of a parsed ``methods`` mapping."""
    return [(get(name), cfg) for name, cfg in methods.items()]


# ---------------------------------------------------------------- the registry: one line each
from selectkit.methods.autoassist import METHOD as _autoassist  # noqa: E402
from selectkit.methods.infobatch import METHOD as _infobatch  # noqa: E402
from selectkit.methods.rholoss import METHOD as _rholoss  # noqa: E402
from selectkit.methods.sb import METHOD as _sb  # noqa: E402
from selectkit.methods.svp import METHOD as _svp  # noqa: E402

for _m in (_autoassist, _infobatch, _rholoss, _sb, _svp):
    register(_m)

__all__ = ["METHODS", "Method", "MethodContext", "MethodStack", "ReportSection", "SLOTS", "get", "parse_stack",
           "register", "stack_of", "unregister"]
