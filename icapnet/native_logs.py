"""Quiet TensorFlow's native start-up chatter on a CLI's stderr, keep everything else.

TensorFlow 2.21 logs through absl before anyone calls ``absl::InitializeLog()``, and such
messages ignore ``TF_CPP_MIN_LOG_LEVEL``: every command printed "WARNING: All log messages
before absl::InitializeLog() ...", oneDNN / CUDA-stub / CPU-feature INFO lines and, on a
machine with CUDA libraries but no GPU, ``E0000 ... failed call to cuInit`` -- which a student
reads as a failure. They are written by C++ straight to file descriptor 2, so no Python
setting reaches them.

:func:`filter_native_stderr` points descriptor 2 at a pipe read by a small child process,
which copies every line to the real stderr except native INFO/WARNING lines (what
``TF_CPP_MIN_LOG_LEVEL=2`` would hide), the absl banner and two known-harmless ERROR lines
(cuInit without a GPU, oneDNN's int32/half fallback to Eigen).
Native ERROR/FATAL lines, anything else C++ or a subprocess writes, and all of Python's own
output (``sys.stderr`` is re-opened on the real stderr, so progress bars still see a
terminal) pass unchanged. The filter is a separate process so that a crash or ``abort()`` of
the CLI cannot swallow its last message: the child drains the pipe until every writer is
gone. ``TF_CPP_MIN_LOG_LEVEL=0`` or ``1`` in the environment turns the filter off.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

# One native log line: severity letter, MMDD, time, thread id, file:line] message.
_NATIVE = r"[IW]\d{4} [0-9:. ]+\d+ [\w./-]+:\d+\] "
NOISE = re.compile(
    "|".join((
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
        r"STDERR",
        _NATIVE,
        # Two native ERROR lines that are not errors: no GPU driver on a CPU machine, and
        # oneDNN falling back to Eigen for int32/half ops on CPUs without AVX-512.
        r"E\d{4} [0-9:. ]+\d+ [\w./-]+:\d+\] (failed call to cuInit|oneDNN supports "
        r"DT_\w+ only on platforms with AVX-512)",
        # second line of cpu_feature_guard's INFO message
        r"To enable the following instructions: .*rebuild TensorFlow with the appropriate "
        r"compiler flags\.",
    )).encode()
)

# The child: copy stdin to stdout line by line, dropping lines that match NOISE. Partial
# lines (progress bars redrawn with \r) are passed on as soon as they arrive.
_CHILD = r"""
import os, re, sys
noise = re.compile(sys.argv[1].encode())
out = sys.stdout.fileno()
pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    kept = [line + b"\n" for line in lines if not noise.match(line)]
    if pending and not noise.match(pending) and pending[:1] not in (b"I", b"W", b"E"):
        kept.append(pending)
        pending = b""
    if kept:
        os.write(out, b"".join(kept))
if pending and not noise.match(pending):
    os.write(out, pending)
"""

_installed = False


def filter_native_stderr() -> bool:
    """Route descriptor 2 through the noise filter (once per process); True if installed."""
    global _installed
    if _installed or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in {"0", "1"}:
        return False
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CHILD, NOISE.pattern.decode()],
            stdin=read_end, stdout=real, stderr=real, close_fds=True,
            start_new_session=True,  # Ctrl+C goes to the CLI, which then closes the pipe
        )
        os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return False  # no pipe or no interpreter to spare: keep the noise, lose nothing
    sys.stderr = open(real, "w", encoding=sys.stderr.encoding or "utf-8",  # noqa: SIM115
                      errors="backslashreplace", buffering=1)
    _installed = True
    return True


def started_as_cli() -> bool:
    """Whether this process is an icapnet command (``python -m icapnet[.sub]``, the
    ``icapnet`` script), not a test runner or notebook that merely calls ``main()``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if name == "icapnet" or name.startswith("icapnet."):
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "icapnet"
