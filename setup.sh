#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine: system packages (Icarus Verilog, Yosys)
# and a virtual environment in .venv with codesign and everything its tests need.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
command -v iverilog >/dev/null 2>&1 || need+=(iverilog)
command -v yosys >/dev/null 2>&1 || need+=(yosys)
command -v chromium >/dev/null 2>&1 || need+=(chromium)   # headless browser for the report tests
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned (in pyproject's "ml" extra) to the CPU build; a newer one pulls a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check -e ".[ml,rtl,dev]"
echo "setup: done. Run the tests with: .venv/bin/pytest -n 2"
