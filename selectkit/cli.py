"""How a stage script ends: the user's own error, not a traceback, is the last thing printed.

``run_stage(main)`` runs a stage's ``main``. A mistake the user can fix (a params value, a path,
a file of the wrong kind, a diverged loss: ConfigError, UsageError, FileNotFoundError,
FloatingPointError) prints one line
``error: <what and how to fix it>``; any other failure prints its traceback and then that line.
Ctrl-C / SIGTERM exit 130 (the trainer has checkpointed by then). Under several processes each
rank's error line names its rank and goes to the launcher (selectkit.launch), which fails the
stage with the first failing rank's error.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from selectkit.validation import ConfigError, UsageError

USER_ERRORS = (ConfigError, UsageError, FileNotFoundError, FloatingPointError)


def _fail(message: str, code: int) -> None:
    from selectkit.launch import write_rank_error

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of several processes: say which
        message = f"rank {os.environ.get('RANK', '0')}: {message}"
        write_rank_error(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run_stage(main: Callable[[], None]) -> None:
    from selectkit.launch import RankFailed

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except USER_ERRORS as e:
        _fail(str(e), 2)
    except RankFailed as e:  # the launcher of several processes: one of them failed, named
        _fail(str(e), 2 if e.exitcode == 2 else 1)
    except Exception as e:  # a bug or an environment problem: the traceback, then the message
        traceback.print_exc()
        _fail(f"{type(e).__name__}: {e}", 1)
    finally:
        from selectkit import dist

        dist.shutdown()
