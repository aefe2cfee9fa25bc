"""Expected errors (bad input the user can fix) and how entry points report them.

Every error the project raises about its inputs (params, manifests, videos, intrinsics, stores, checkpoints)
subclasses :class:`InputError`, whose message names the file and the problem. Entry points (the
``videomamba-depth`` CLI and every ``stages/*.py``) run through :func:`run_main` / :func:`call`: such an
error prints one line ``<prog>: error: <message>`` on stderr and exits with :data:`EXIT_INPUT_ERROR`, no
traceback. Anything else is a bug and keeps its traceback. ``VMD_DEBUG=1`` shows the traceback of expected
errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

# Environment variable that turns the one-line reports back into tracebacks.
DEBUG_ENV = "VMD_DEBUG"
# Exit status of a run stopped by bad input (argparse uses 2 for bad arguments too).
EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """Base class of the project's expected errors: the message names the file and the problem.

    A ``ValueError`` so that callers (and tests) that catch ``ValueError`` keep working.
    """


class MissingDependencyError(InputError, ImportError):
    """An optional dependency is not installed; the message says what to install (one guarded import each).

    An ``ImportError`` too, so ``except ImportError`` around optional features keeps working.
    """


def debug_enabled() -> bool:
    """Whether ``VMD_DEBUG`` asks for tracebacks (set to anything but empty or ``0``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with ``; ``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def call(fn: Callable[[], int | None], prog: str) -> int:
    """Run ``fn``; return its exit status (None: 0), or report an expected error and return 2.

    Expected: :class:`InputError`, and ``OSError`` (a file that cannot be read or written; its message
    names the file). Everything else propagates with its traceback; so do expected errors under
    ``VMD_DEBUG=1``.
    """
    try:
        status = fn()
    except BrokenPipeError:  # not a file problem: output piped into `head`; the caller decides
        raise
    except (InputError, OSError) as exc:
        if debug_enabled():
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0 if status is None else status


def run_main(main: Callable[[], int | None], prog: str | None = None) -> NoReturn:
    """Exit with :func:`call`'s status: the ``if __name__ == "__main__":`` line of every stage script.

    ``prog`` defaults to the script's name (``decode`` for ``python -m stages.decode``).
    """
    sys.exit(call(main, prog or Path(sys.argv[0]).stem))
