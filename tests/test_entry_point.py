"""The top-level ``icapnet`` command: version, help, and a closed pipe without a traceback."""

from __future__ import annotations

import subprocess
import sys

from icapnet import __version__


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icapnet", *args], capture_output=True,
                          text=True, timeout=60)


def test_version_and_help():
    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"icapnet {__version__}"
    done = _run("--help")
    assert done.returncode == 0
    assert "caption" in done.stdout and "serve" in done.stdout


def test_unknown_subcommand_is_one_line_and_exit_2():
    done = _run("no-such-thing")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown subcommand 'no-such-thing'")
    assert "Traceback" not in done.stderr


def test_reader_closing_the_pipe_gives_no_traceback():
    # `icapnet --help | head -1`: the reader is gone before icapnet writes.
    proc = subprocess.Popen([sys.executable, "-m", "icapnet", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err
    assert b"BrokenPipeError" not in err
