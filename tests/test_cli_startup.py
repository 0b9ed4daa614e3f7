"""CLI start-up: TensorFlow's native start-up lines are filtered, real errors are not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from icapnet.native_logs import NOISE

ROOT = Path(__file__).resolve().parents[1]
ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
NATIVE_NOISE = [
    ABSL,
    b"I0000 00:00:1795918271.085943   15119 port.cc:153] oneDNN custom operations are on.",
    b"I0000 00:00:1795918271.086327   15119 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.",
    b"E0000 00:00:1795918282.080417   15136 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"W0000 00:00:1795918282.080417   15136 gpu_device.cc:2341] Cannot dlopen some GPU libs.",
    b"E0000 00:00:1795921465.249891   24858 util.cc:131] oneDNN supports DT_HALF only on "
    b"platforms with AVX-512. Falling back to the default Eigen-based implementation if present.",
]
REAL = [
    b"E0000 00:00:1795918282.1   15136 op_kernel.cc:1] OUT_OF_RANGE: a real native error",
    b"F0000 00:00:1795918282.2   15136 check.cc:2] Check failed: fatal, also kept",
    b"Segmentation fault in libsomething (not a log line): kept",
]


def test_noise_pattern_matches_startup_lines_only():
    assert all(NOISE.match(line) for line in NATIVE_NOISE)
    assert not any(NOISE.match(line) for line in REAL)


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import os, sys
        from icapnet.native_logs import filter_native_stderr
        installed = filter_native_stderr()
        print("installed" if installed else "not installed", flush=True)
        {textwrap.indent(textwrap.dedent(script), "        ").strip()}
    """)
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=full_env,
                          timeout=60, check=False)


LINES = repr(b"\n".join([*NATIVE_NOISE, *REAL]) + b"\n")


def test_filter_drops_native_startup_lines_and_keeps_the_rest():
    done = _run(f"""
        os.write(2, {LINES})          # what C++ writes to descriptor 2
        os.write(2, b"progress 50%\\r")  # a partial line is passed on as it comes
        sys.stderr.write("a Python traceback line\\n")
        sys.stderr.flush()
        subprocess_out = os.system("echo 'a child process error' 1>&2")
    """)
    assert done.returncode == 0 and done.stdout == b"installed\n"
    err = done.stderr
    for line in NATIVE_NOISE:
        assert line not in err
    for line in [*REAL, b"progress 50%\r", b"a Python traceback line", b"a child process error"]:
        assert line in err


def test_a_crashing_process_does_not_lose_its_last_native_message():
    done = _run(f"""
        os.write(2, {LINES})
        os.abort()
    """)
    assert done.returncode != 0
    assert all(line in done.stderr for line in REAL)
    assert ABSL not in done.stderr


def test_tf_cpp_min_log_level_below_2_keeps_everything():
    done = _run(f"os.write(2, {LINES})", TF_CPP_MIN_LOG_LEVEL="0")
    assert done.stdout == b"not installed\n"
    assert all(line in done.stderr for line in NATIVE_NOISE)


def test_gc_paused_restores_the_collector_state():
    """The caption CLI pauses garbage collection while TensorFlow and the models load; tests
    (and anything else) calling it in-process get the collector back as it was."""
    import gc

    from icapnet.cli import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # was off before: stays off
    finally:
        gc.enable()


def test_skip_final_collection_freezes_only_an_icapnet_command():
    """A process that is an icapnet command freezes its objects before exiting (and keeps its
    exit code); one that merely calls main(), like this test runner, is left alone."""
    import gc

    from icapnet.cli import skip_final_collection

    frozen = gc.get_freeze_count()
    skip_final_collection()
    assert gc.get_freeze_count() == frozen
    script = textwrap.dedent("""
        import atexit, gc, sys
        sys.argv[0] = "{argv0}"
        from icapnet.cli import skip_final_collection
        atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0, flush=True))
        skip_final_collection()
        sys.exit(3)
    """)
    for argv0, frozen_at_exit in (("/usr/local/bin/icapnet", True), ("-c", False)):
        proc = subprocess.run([sys.executable, "-c", script.format(argv0=argv0)],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 3
        assert proc.stdout.strip() == f"frozen {frozen_at_exit}"
