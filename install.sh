#!/usr/bin/env bash
# Set up usam in ./.venv on a fresh machine: `bash install.sh` for users, `bash install.sh --dev` for the tests.
#
# CPU machines (the default): torch and torchvision are pinned through constraints.txt, exported as PIP_CONSTRAINT
# so that the pins also reach build environments (see ../shared/ENVIRONMENT.md: an unpinned torch pulls the newest
# CUDA build and several GB of nvidia wheels). SAM2 is built from PyPI's sam2==1.1.0 without its CUDA extension.
# On a CUDA machine, install torch for your CUDA first and run with USAM_TORCH=keep (see the README).
set -euo pipefail
cd "$(dirname "$0")"

extras="sam2"
# dev includes the transformers backend (usam[transformers], plus timm for EdgeTAM's test): none of them requires torch
# beyond the pin, so the constraints keep the CPU build (measured: 23 packages, ~40 s, ~200 MB).
if [ "${1:-}" = "--dev" ]; then extras="sam2,dev"; fi
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

if [ "${USAM_TORCH:-pin}" = "pin" ]; then
  export PIP_CONSTRAINT="$PWD/constraints.txt"
  "${pip[@]}" install -q torch==2.13.0 torchvision==0.28.0
fi
# sam2's setup.py imports torch, so it must build against the torch installed above, not in an isolated env.
"${pip[@]}" install -q setuptools wheel
SAM2_BUILD_CUDA="${SAM2_BUILD_CUDA:-0}" "${pip[@]}" install -q --no-build-isolation "sam2==1.1.0"
"${pip[@]}" install -q -e ".[$extras]"
echo "usam installed in $PWD/.venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

# The demo's browser test (tests/demo) drives Debian's headless chromium through selenium. Install it when it is
# missing and apt can (root, Debian/Ubuntu; measured here: apt-get update + install about 55 s); otherwise the test
# is skipped with its reason.
if [ "${1:-}" = "--dev" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "install.sh: could not install chromium and chromium-driver: the demo's browser test will be skipped"
  else
    echo "install.sh: no chromedriver and no root apt-get: the demo's browser test will be skipped" \
      "(apt-get install chromium chromium-driver to run it)"
  fi
fi
