#!/bin/sh
# Create ./.venv and install icapnet (pinned) into it.
#   sh setup.sh        runtime: what `python -m icapnet.demo` / caption / serve need
#   sh setup.sh dev    plus the test and lint tools (requirements-dev.txt)
# Works with a stock Debian/Ubuntu python3, where `pip install` outside a venv is refused
# (PEP 668) and python3-venv may be missing: the venv is then made without pip and the
# system's pip installs pip into it. Re-running reuses .venv.
set -eu
cd "$(dirname "$0")"
py=${PYTHON:-python3}
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    "$py" -m venv --without-pip .venv
  fi
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$py" -m pip --python .venv/bin/python install -q pip || {
    echo "error: $py can make neither a venv with pip nor has pip itself;" \
         "install one of them (Debian/Ubuntu: sudo apt install python3-venv)" >&2
    exit 1
  }
fi
echo "installing $req into .venv (about 2.5 GB, a few minutes) ..."
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req" -e .
