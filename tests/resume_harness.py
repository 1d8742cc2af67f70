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


def fake_losses(ids) -> torch.Tensor:
    """Deterministic per-example 'training losses' for graphs run without a trainer."""
    ids = torch.as_tensor(ids)
    return ((ids * 7919) % 101).float() / 50.0


def graph_epoch(graph, state=None, stop_after=None) -> List[Any]:
    """One epoch of an InputGraph as a trainer would consume it: every batch's losses are handed
    back through ``observe``. With ``state`` the graph is restored first; with ``stop_after``
    the epoch is cut short after that many batches."""
    if state is not None:
        graph.load_state_dict(state)
    out = []
    for step, batch in enumerate(graph):
        out.append(canon(batch))
        graph.observe(batch["ids"], fake_losses(batch["ids"]), step)
        if stop_after is not None and len(out) == stop_after:
            break
    return out


def check_graph_resume(make: Callable[[], Any], stop_after: int) -> None:
    """``check_resume`` for a whole InputGraph (loader, loss table and listeners' state)."""
    g = make()
    epoch0, epoch1 = graph_epoch(g), graph_epoch(g)
    assert len(epoch0) > stop_after, "pick stop_after inside the epoch"
    g = make()
    head = graph_epoch(g, stop_after=stop_after)
    assert head == epoch0[:stop_after]
    state = g.state_dict()
    fresh = make()
    assert graph_epoch(fresh, state) == epoch0[stop_after:]
    assert graph_epoch(fresh) == epoch1
    g = make()
    initial = g.state_dict()
    assert graph_epoch(make(), initial) == epoch0
    g = make()
    graph_epoch(g)
    end = g.state_dict()
    fresh = make()
    assert graph_epoch(fresh, end) == []
    assert graph_epoch(fresh) == epoch1
