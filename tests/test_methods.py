"""Registry-driven tests: every registered method, with its example params, must be seeded,
resume mid-epoch through the shared harness, keep ids in range without repeats, report its
counters, and shut its workers down. A new method gets these tests by being registered."""

import threading

import numpy as np
import pytest
import torch

from selectkit.graph import build_input_graph
from selectkit.handle import ModelHandle
from selectkit.methods import METHODS, parse_stack, stack_of
from selectkit.models import make_model
from selectkit.config import ModelConfig
from selectkit.tasks import task_for

from conftest import example_params
from resume_harness import check_graph_resume, graph_epoch

ONLINE = sorted(n for n, m in METHODS.items() if m.slot != "stages")


@pytest.fixture(scope="module")
def live(digits_store):
    task = task_for(digits_store)
    torch.manual_seed(0)
    model = make_model(ModelConfig("mlp", {"hidden": [16]}), task)
    model.train()
    return task, ModelHandle(model, task, torch.device("cpu"))


def _graph(live, name, seed=0, ids=None, params=None):
    task, handle = live
    stack = stack_of(parse_stack({name: example_params(name, task, params)}))
    ids = np.arange(0, len(task), 2) if ids is None else ids  # a subset: ids need not start at 0
    return build_input_graph(task, stack, ids, batch_size=32, seed=seed, model=handle, prefetch=0)


def test_every_method_has_a_card_and_example():
    from pathlib import Path

    import selectkit.methods as pkg

    root = Path(pkg.__file__).parent
    for name, m in METHODS.items():
        assert (root / name / "README.md").is_file(), f"method {name} has no method card"
        parse_stack({name: m.example}) if m.slot != "stages" else None
        assert m.title


@pytest.mark.parametrize("name", ONLINE)
def test_method_is_seeded(live, name):
    run = lambda seed: [b["ids"] for b in graph_epoch(_graph(live, name, seed))]
    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.parametrize("name", ONLINE)
def test_method_resumes_mid_epoch(live, name):
    check_graph_resume(lambda: _graph(live, name), stop_after=5)


@pytest.mark.parametrize("name", ONLINE)
def test_method_ids_in_range_no_repeats_counters_present(live, name):
    ids = np.arange(0, len(live[0]), 2)
    g = _graph(live, name, ids=ids)
    for _ in range(2):
        seen = np.concatenate([np.asarray(b["ids"]) for b in graph_epoch(g)])
        assert np.isin(seen, ids).all() and len(np.unique(seen)) == len(seen)
        assert len(seen) <= len(ids)
    c = g.counters()
    m = METHODS[name]
    assert set(m.counters) <= set(c), f"{name} lacks counters {set(m.counters) - set(c)}"
    assert c[m.offered] == 2 * len(ids) and 0 < c[m.passed] <= c[m.offered]


@pytest.mark.parametrize("name", ONLINE)
def test_method_shutdown_leaves_no_thread(live, name):
    before = set(threading.enumerate())
    g = _graph(live, name, params={"worker": "thread"} if name == "autoassist" else None)
    graph_epoch(g)
    g.shutdown()
    assert set(threading.enumerate()) - before == set()
