"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


class IcapnetError(Exception):
    """A problem with the user's input (file, flag, model) rather than a bug in icapnet."""


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run a subcommand's ``main`` so that input problems end in one line and a non-zero exit."""
    try:
        code = main(argv)
    except IcapnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except Exception as err:
        from icapnet.io import is_disk_full  # io imports this module

        if not is_disk_full(err):
            raise
        # A write outside icapnet.io (TensorFlow's logs, a library's cache): name what we can.
        reason = str(err).splitlines()[0] if str(err) else repr(err)
        where = getattr(err, "filename", None)
        print(f"error: {where}: disk full ({reason})" if where else
              f"error: disk full: {reason}", file=sys.stderr)
        return 2
    return int(code or 0)


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do.

    Python would otherwise print a traceback when it flushes stdout at exit; pointing stdout at
    /dev/null first is the recipe from the ``signal`` module's documentation.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a killed pipeline stage


def require_positive(args: object, *names: str, optional: tuple[str, ...] = ()) -> None:
    """Reject CLI counts below 1 (``optional`` ones may also be None) with a one-line error."""
    for name in (*names, *optional):
        value = getattr(args, name)
        if value is None and name in optional:
            continue
        if value < 1:
            raise IcapnetError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
