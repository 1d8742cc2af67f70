"""A stage that asks for several processes launches itself under torchrun (PyTorch's elastic
launcher, in this process: ``torch.distributed.launcher.elastic_launch``, what ``torchrun
--standalone`` runs) and waits for them.

When a process fails, torchrun stops the others at once (it polls them every 0.1 s) and this
raises one error naming the rank that failed first and its own error line, which that rank
wrote to a file this launcher gave it (``SELECTKIT_ERROR_DIR``; ``selectkit.cli.run_stage``
writes it). A rank that hangs instead of dying is bounded by the process group's timeout
(``train.dist_timeout_s``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional, Sequence

ERROR_DIR_ENV = "SELECTKIT_ERROR_DIR"


class RankFailed(RuntimeError):
    """A process of a multi-process stage failed (``rank``, ``exitcode``, its ``message``)."""

    def __init__(self, rank: int, exitcode: int, message: str, hint: str = ""):
        self.rank, self.exitcode, self.message = rank, exitcode, message
        super().__init__(f"rank {rank} of the stage's processes failed (exit code {exitcode}): {message}"
                         + (f"; {hint}" if hint else ""))


def write_rank_error(message: str) -> None:
    """Called by a failing rank: leave its one-line error where the launcher looks for it."""
    d = os.environ.get(ERROR_DIR_ENV)
    if d:
        rank = os.environ.get("RANK", "0")
        try:
            Path(d, f"rank{rank}.txt").write_text(message)
        except OSError:
            pass


def torchrun(nproc: int, script: str | Path, argv: Sequence[str], hint: str = "",
             monitor_interval: float = 0.1, shutdown_timeout: float = 60.0) -> None:
    """Run ``python script *argv`` as ``nproc`` processes on this machine and wait for them.

    A SIGINT/SIGTERM to this process goes to every rank (they finish the step, checkpoint and
    stop); ranks still running ``shutdown_timeout`` seconds later are killed.

    Raises:
        RankFailed: a process failed: the first to fail, with its error (``hint`` appended).
        KeyboardInterrupt: the processes were interrupted (they checkpointed first).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"selectkit-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=monitor_interval, shutdown_timeout=int(max(1, shutdown_timeout)))
    with tempfile.TemporaryDirectory(prefix="selectkit-ranks-") as errors:
        old: Optional[str] = os.environ.get(ERROR_DIR_ENV)
        os.environ[ERROR_DIR_ENV] = errors
        try:
            elastic_launch(config, entrypoint=sys.executable)(str(script), *argv)
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            if failure.exitcode == 130:  # interrupted: every rank checkpointed and stopped
                raise KeyboardInterrupt(f"{nproc} processes interrupted; rerun to resume") from None
            f = Path(errors, f"rank{rank}.txt")
            message = f.read_text().strip() if f.is_file() else (
                f"it died with {_signal_name(failure.exitcode)} before reporting an error")
            raise RankFailed(rank, failure.exitcode, message, hint) from None
        except SignalException as e:  # the launcher itself was signalled; the ranks were stopped
            raise KeyboardInterrupt(f"{e.sigval.name}: {nproc} processes stopped"
                                    + (f"; {hint}" if hint else "")) from None
        finally:
            if old is None:
                os.environ.pop(ERROR_DIR_ENV, None)
            else:
                os.environ[ERROR_DIR_ENV] = old


def _signal_name(exitcode: int) -> str:
    import signal

    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"
