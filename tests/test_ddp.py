"""Training under several processes (gloo on the CPU, 2 processes, digits): DDP takes the same
steps as one process with the same global batch, selection per rank stays in step however
unevenly the ranks keep, losses are shared, scoring shards exactly, checkpoints resume exactly
and only with the world size that wrote them. One process group runs every scenario
(tests/dist_harness.py); the tests here read what it left."""

import json
import socket

import numpy as np
import pytest
import torch

from selectkit.methods import METHODS
from selectkit.tasks import task_for
from selectkit.train import Trainer
from selectkit.validation import UsageError

from conftest import example_params, tiny_train_cfg
from dist_harness import params_vector, worker

pytestmark = pytest.mark.e2e  # spawns processes
ONLINE = sorted(n for n, m in METHODS.items() if m.slot != "stages")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ran(digits_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    task = task_for(digits_store)
    examples = {name: example_params(name, task) for name in ONLINE}
    torch.multiprocessing.spawn(worker, args=(2, _free_port(), str(digits_store.root), str(out), examples),
                                nprocs=2, join=True)
    return out


def _npz(out, name, rank):
    with np.load(out / f"{name}-rank{rank}.npz") as z:
        return {k: z[k] for k in z.files}


def _json(out, name, rank=0):
    return json.loads((out / f"{name}-rank{rank}.json").read_text())


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(ran, digits_store):
    # 32 per rank x 2 ranks = one process's 64: each step averages the gradient over the same 64
    # examples (rank r takes positions r, r+2, ... of the one global permutation), so the models
    # match up to the order of a float sum (the all-reduce averages two means of 32): 1e-5.
    cfg = tiny_train_cfg(epochs=1, model={"name": "mlp", "args": {"hidden": [32]}}, eval_every=0,
                         input={"batch_size": 64, "prefetch": 1})
    alone = Trainer(digits_store, cfg, ids=np.arange(1280))
    alone.fit()
    two = [_npz(ran, "traditional", r)["params"] for r in (0, 1)]
    assert np.array_equal(two[0], two[1])  # DDP keeps the replicas identical
    np.testing.assert_allclose(two[0], params_vector(alone.model), rtol=0, atol=1e-5)
    m = _json(ran, "traditional")
    assert m["steps"] == 20 and m["examples_backpropagated"] == 1280 and m["world_size"] == 2


def test_sharded_scoring_equals_one_process(ran):
    alone = _npz(ran, "scores-alone", 0)
    for r in (0, 1):  # every rank holds the gathered scores
        got = _npz(ran, "scores", r)
        assert set(got) == set(alone)
        for k in alone:
            assert np.array_equal(got[k], alone[k]), k


def test_ranks_keeping_very_different_counts_stay_in_step(ran):
    m = _json(ran, "skew")
    (r0, r1) = m["ranks"]
    assert r1["counters"]["sb/kept"] < r0["counters"]["sb/kept"] / 4  # rank 1 keeps 2 of 64
    assert r1["idle_steps"] > 0 and r0["idle_steps"] == 0  # rank 1 waited in zero-weight steps
    # no kept example was dropped to make the ranks agree
    assert m["examples_backpropagated"] == r0["counters"]["sb/kept"] + r1["counters"]["sb/kept"]
    assert m["counters"]["sb/kept"] == r0["counters"]["sb/kept"] + r1["counters"]["sb/kept"]  # the run's, not rank 0's
    assert m["counters"]["sb/kept_fraction"] == m["counters"]["sb/kept"] / m["counters"]["sb/candidates"]
    assert np.array_equal(_npz(ran, "skew", 0)["params"], _npz(ran, "skew", 1)["params"])


def test_sb_shares_its_window_and_loss_table_across_ranks(ran, digits_store):
    m = _json(ran, "sb")["metrics"]
    candidates = sum(r["counters"]["sb/candidates"] for r in m["ranks"])
    assert candidates == 3 * len(digits_store.train)
    for r in (0, 1):  # every rank ranked against every rank's losses, and knows every loss
        assert _json(ran, "sb", r)["window_count"] == candidates
        assert np.isfinite(_npz(ran, "sb", r)["table"]).all()
    assert np.array_equal(_npz(ran, "sb", 0)["table"], _npz(ran, "sb", 1)["table"])
    # the fraction kept is that of one process on the same data, within sampling noise
    cfg = tiny_train_cfg(epochs=3, methods={"sb": {"beta": 2.0, "selection_batch_size": 64, "staleness": 2}},
                         input={"batch_size": 32, "prefetch": 1}, eval_every=0)
    alone = Trainer(digits_store, cfg).fit().metrics
    assert abs(m["kept_fraction"] - alone["kept_fraction"]) < 0.05, (m["kept_fraction"], alone["kept_fraction"])


def test_a_signal_on_one_rank_checkpoints_every_rank_and_resume_is_exact(ran):
    res = _json(ran, "resume")
    assert "a signal on another rank" in res["interrupted"]  # rank 1 was signalled; rank 0 stopped too
    assert _json(ran, "checkpoint") == {"world_size": 2, "ranks": 2}
    for r in (0, 1):
        z = _npz(ran, "resume", r)
        assert np.array_equal(z["whole"], z["resumed"])
    # seconds and milliseconds are this machine's (auto's timings included), not the method's
    untimed = [[{k: v for k, v in row.items() if not k.endswith(("_s", "_ms"))} for row in c]
               for c in (res["curve"], res["whole_curve"])]
    assert untimed[0] == untimed[1]


def test_resuming_with_another_number_of_processes_names_both(ran, digits_store):
    cfg = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": 64, "staleness": 2,
                                                   "selection_fold": False}},
                         input={"batch_size": 32, "prefetch": 2}, eval_every=4, dist_timeout_s=60.0)
    with pytest.raises(UsageError, match=r"written by 2 training process\(es\) but this run has 1.*--resume never"):
        Trainer(digits_store, cfg, checkpoint_path=ran / "ck.pt").fit(resume=ran / "ck.pt")


def test_a_budget_ends_every_rank_at_the_same_step(ran):
    a, b = (_npz(ran, "budget", r) for r in (0, 1))
    assert a["step"] == b["step"] > 0 and np.array_equal(a["params"], b["params"])
    m = _json(ran, "budget")
    assert m["train_s"] >= 0.6 and m["epochs"] < 50


@pytest.mark.parametrize("name", ONLINE)
def test_every_method_trains_under_two_processes(ran, name):
    a, b = (_npz(ran, f"method-{name}", r)["params"] for r in (0, 1))
    assert np.isfinite(a).all() and np.array_equal(a, b)
    m = _json(ran, f"method-{name}")
    if name == "autoassist":  # the assistant heard both ranks' trained batches, once each
        published = m["counters"]["aa/published"]
        assert published == m["ranks"][0]["counters"]["aa/published"] and published > m["steps"]


# ---------------------------------------------------------------- the stages under torchrun

RANK_SCRIPT = """
import os, sys, time
from selectkit.cli import run_stage
from selectkit.validation import UsageError

def main():
    if os.environ["RANK"] == "1":
        raise UsageError("train.lr=-1 should be > 0")
    time.sleep(600)  # rank 0 would wait for rank 1 forever: the launcher must stop it

run_stage(main)
"""


def test_a_rank_that_raises_fails_the_launch_at_once_naming_rank_and_error(tmp_path):
    import time

    from selectkit.launch import RankFailed, torchrun

    script = tmp_path / "stage.py"
    script.write_text(RANK_SCRIPT)
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 .*exit code 2.*rank 1: train.lr=-1 should be > 0") as e:
        torchrun(2, script, [])
    assert e.value.rank == 1
    assert time.monotonic() - t0 < 120  # a bound against a hang (rank 0 sleeps 600 s), not a timing claim


SITE_KILL = """
import os, signal, threading, time
if os.environ.get("RANK") == "1" and os.environ.get("KILL_WHEN"):
    def _watch():
        while not os.path.exists(os.environ["KILL_WHEN"]):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch, daemon=True).start()
"""

STAGE_PARAMS = """
train:
  model: {{name: mlp, args: {{hidden: [32]}}}}
  lr: 0.1
  epochs: 3
  input: {{batch_size: 32, prefetch: 1}}
  eval_every: 0
  threads: 1
  processes: 2
  methods: {{sb: {{beta: 1.0, selection_batch_size: 64}}}}
tracking:
  experiment: {experiment}
  log_model: false
"""


@pytest.mark.cost(45)
def test_stages_as_two_processes_a_killed_rank_fails_training_the_rerun_resumes_scores_match_one(tmp_path, digits_store):
    import os
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    import mlflow

    from selectkit.checkpoint import read_checkpoint

    root = Path(__file__).resolve().parents[1]
    experiment = f"ddp-{uuid.uuid4().hex[:8]}"
    (tmp_path / "params.yaml").write_text(STAGE_PARAMS.format(experiment=experiment))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_KILL)
    ck = tmp_path / "ck.pt"
    cmd = [sys.executable, str(root / "stages/train.py"), "--store", str(digits_store.root), "--out",
           str(tmp_path / "run"), "--checkpoint", str(ck)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "KILL_WHEN": str(ck)}  # rank 1 dies by SIGKILL once the first checkpoint (epoch 1) is written
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 200  # bounded: no hang on the dead rank's collectives
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 of the stage's processes failed") and "SIGKILL" in last, r.stderr
    assert "resumes when the stage is rerun" in last
    assert read_checkpoint(ck)["world_size"] == 2  # the last checkpoint is intact
    assert not (tmp_path / "run").exists()  # nothing written for a failed run

    env.pop("KILL_WHEN")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["world_size"] == 2 and run["epochs"] == 3 and len(run["ranks"]) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curve.csv", "metrics.json", "model.pt", "run.json"]
    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run: rank 0's, reopened on resume

    # the score stage on the trained model, as 2 processes: the scores one process computes
    from selectkit.io import load_model
    from selectkit.methods.svp.artifacts import score_store
    from selectkit.tasks import task_for

    (tmp_path / "params.yaml").write_text("score: {batch_size: 100, processes: 2, embeddings: true}\n"
                                          f"tracking: {{experiment: {experiment}}}\n")
    r = subprocess.run([sys.executable, str(root / "stages/score.py"), "--store", str(digits_store.root), "--proxy",
                        str(tmp_path / "run"), "--out", str(tmp_path / "scores")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    task = task_for(digits_store)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the stage's processes (torchrun sets OMP_NUM_THREADS=1)
    try:
        alone = score_store(load_model(tmp_path / "run", task, torch.device("cpu"))[0], task, torch.device("cpu"), 100,
                            embeddings=True)
    finally:
        torch.set_num_threads(threads)
    with np.load(tmp_path / "scores/scores.npz") as z:
        assert sorted(z.files) == sorted(alone) and all(np.array_equal(z[k], alone[k]) for k in alone)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scores")) == ["scores"]
