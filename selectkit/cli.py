"""How a stage script ends: the user's own error, not a traceback, is the last thing printed.

``run_stage(main)`` runs a stage's ``main``. A mistake the user can fix (a params value, a path,
a file of the wrong kind, a diverged loss: ConfigError, UsageError, FileNotFoundError,
FloatingPointError) prints one line
``error: <what and how to fix it>``; any other failure prints its traceback and then that line.
Ctrl-C / SIGTERM exit 130 (the trainer has checkpointed by then).
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable

from selectkit.validation import ConfigError, UsageError

USER_ERRORS = (ConfigError, UsageError, FileNotFoundError, FloatingPointError)


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:  # a bug or an environment problem: the traceback, then the message
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
