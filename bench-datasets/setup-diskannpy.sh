#!/usr/bin/env bash
# Create (or reuse) a private venv holding diskannpy, the reference engine for
# bench-datasets/diskann_compare.py. diskannpy 0.7.0 pins numpy 1.25, so it
# lives apart from any other Python environment.
#
# Env overrides:
#   DISKANNPY_VENV     venv location        (default: $HOME/.venvs/diskannpy)
#   DISKANNPY_PYTHON   interpreter to use   (default: python3.11, else python3)
#   DISKANNPY_VERSION  package version      (default: 0.7.0)
#
# Safe to run again: an existing venv with the right version is left alone.
# Prints the venv's python path as the last line of output.
set -euo pipefail

VENV="${DISKANNPY_VENV:-$HOME/.venvs/diskannpy}"
VERSION="${DISKANNPY_VERSION:-0.7.0}"

if [[ -n "${DISKANNPY_PYTHON:-}" ]]; then
  PY="$DISKANNPY_PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
  # 0.7.0 ships manylinux_2_28 x86_64 wheels for CPython 3.9-3.11 only.
  PY=python3.11
else
  PY=python3
fi

installed_version() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
from importlib.metadata import version
print(version("diskannpy"))
EOF
}

if [[ -x "$VENV/bin/python" ]] && [[ "$(installed_version || true)" == "$VERSION" ]]; then
  echo "diskannpy $VERSION already installed in $VENV" >&2
else
  pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  case "$pyver" in
    3.9|3.10|3.11) ;;
    *) echo "warning: $PY is Python $pyver; diskannpy $VERSION has wheels for 3.9-3.11 only" >&2 ;;
  esac
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating venv $VENV with $PY ($pyver)" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # --only-binary: never try to compile DiskANN from an sdist (needs MKL, etc.).
  "$VENV/bin/python" -m pip install --quiet --only-binary=:all: "diskannpy==$VERSION"
fi

# Smoke test: the native extension loads and numpy is the pinned one.
"$VENV/bin/python" - <<'EOF' >&2
import numpy, diskannpy
from importlib.metadata import version
print(f"ok: diskannpy {version('diskannpy')}, numpy {numpy.__version__}")
EOF
echo "$VENV/bin/python"
