#!/usr/bin/env bash
# The station's self-check of a bundle on an emulated x86 CPU of another kind (qemu-user): which
# int8 variant passes and runs there. On a machine with AVX-512 VNNI, `-cpu Haswell` is the
# AVX2-only CPU (no AVX-512, no VNNI) whose int8 kernels saturate 8-bit weights; qemu cannot add
# VNNI to a CPU that lacks it, so on an AVX2 machine the Arm kinds (scripts/arm64_check.sh) are
# the other side.
#
#   scripts/x86_emulation_check.sh BUNDLE [QEMU_CPU_MODEL]     # default Haswell; needs qemu-user
#
# Emulated timings say nothing about that CPU's speed: only the parity table and the choice count.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:?usage: scripts/x86_emulation_check.sh BUNDLE [QEMU_CPU_MODEL]}
MODEL=${2:-Haswell}
command -v qemu-x86_64 >/dev/null || { echo "x86_emulation_check: needs qemu-x86_64 (apt-get install qemu-user)" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "x86_emulation_check: no .venv: run scripts/setup.sh" >&2; exit 1; }
PY=$(readlink -f .venv/bin/python)
# the venv's site-packages by path: qemu runs the interpreter binary, not the venv's launcher
export PYTHONPATH="$PWD:$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')"
echo "== kenpin verify on the emulated $MODEL"
qemu-x86_64 -cpu "$MODEL" "$PY" -m kenpin.cli verify --bundle "$BUNDLE" --threads 1 \
  --json "${KENPIN_VERIFY_JSON:-/dev/null}"
