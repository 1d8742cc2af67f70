"""One resume harness for every node (after torchdata's test/nodes/utils.py): a node must
resume mid-epoch, run the epoch after a resume, restore its initial state, and restore at
the end of an epoch, each time yielding exactly what an uninterrupted node yields."""

from typing import Any, Callable, List

import numpy as np
import torch
from torchdata.nodes import BaseNode


def canon(item: Any) -> Any:
    """A comparable form of an item: tensors and arrays as lists."""
    if isinstance(item, dict):
        return {k: canon(v) for k, v in sorted(item.items())}
    if isinstance(item, torch.Tensor):
        return item.tolist()
    if isinstance(item, np.ndarray):
        return item.tolist()
    return item


def run_epoch(node: BaseNode, state=None) -> List[Any]:
    node.reset(state)
    return [canon(x) for x in node]


def check_resume(make: Callable[[], BaseNode], stop_after: int) -> None:
    node = make()
    epoch0 = run_epoch(node)
    epoch1 = run_epoch(node)
    assert len(epoch0) > stop_after, "pick stop_after inside the epoch"

    # mid-epoch: take stop_after items, snapshot, continue; a fresh node restored from the
    # snapshot yields the rest of the epoch, then the next epoch identically.
    node = make()
    node.reset(None)
    head = [canon(next(node)) for _ in range(stop_after)]
    state = node.state_dict()
    assert head == epoch0[:stop_after]
    fresh = make()
    assert run_epoch(fresh, state) == epoch0[stop_after:]
    assert run_epoch(fresh) == epoch1

    # initial state restores the whole first epoch
    node = make()
    node.reset(None)
    initial = node.state_dict()
    assert run_epoch(make(), initial) == epoch0

    # end-of-epoch state yields nothing, then the next epoch
    node = make()
    run_epoch(node)
    end = node.state_dict()
    fresh = make()
    assert run_epoch(fresh, end) == []
    assert run_epoch(fresh) == epoch1
