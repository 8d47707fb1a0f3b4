#!/usr/bin/env bash
# The station (device/, no torch) installed and tested on a 64-bit Arm (aarch64) userland,
# emulated with qemu-user on an x86 machine: the Pi is the target, not the build box.
#
#   scripts/arm64_check.sh [ARM64_ROOT]        # default /tmp/arm64root; run as root (chroot, mount)
#
# ARM64_ROOT is a Debian arm64 tree. To make one (about 15 min, mostly the emulated second stage):
#
#   apt-get install debootstrap qemu-user-static binfmt-support
#   cat /proc/sys/fs/binfmt_misc/qemu-aarch64          # "enabled", flags with F: no copy of qemu needed
#   debootstrap --arch=arm64 --foreign --include=python3-venv,ca-certificates bookworm /tmp/arm64root \
#       http://deb.debian.org/debian
#   chroot /tmp/arm64root /debootstrap/debootstrap --second-stage
#   chroot /tmp/arm64root /usr/bin/python3 -c 'import platform; print(platform.machine())'   # aarch64
#
# What it does:
#   1. builds the tiny test line and bundle here with the repo's .venv (training needs torch, which
#      the Pi never has), unless KENPIN_TEST_PREBUILT names a folder from tests.conftest.build_prebuilt;
#   2. copies the repo (KENPIN_REF=<commit>: that commit; default: the working tree's tracked and
#      untracked-not-ignored files) to ARM64_ROOT/opt/kenpin-check/src and the bundle beside it;
#   3. bind-mounts /proc /sys /dev (and an aarch64 /proc/cpuinfo, see below), copies resolv.conf and this host's CA bundle (for pip behind a
#      TLS-inspecting proxy), installs python3-venv with apt if missing;
#   4. makes a fresh /opt/kenpin-venv there and `pip install '.[pi]' pytest httpx`: the station's base
#      dependencies plus gpiozero (the Pi extra), never the train extra (torch);
#   5. runs the torch-free station tests under emulation with KENPIN_TEST_PREBUILT set (the fixtures
#      copy the prebuilt line and bundle instead of training), then times int8 inference.
# Results (and the excluded tests, with the reason) are in BENCHMARKS.md, "Station daemon".
#
# Environment: KENPIN_REF, KENPIN_TEST_PREBUILT as above; KENPIN_ARM64_TIME_BUNDLE=DIR also times
# that bundle's int8 model and proves it with `kenpin verify`; KENPIN_ARM64_PYTEST_ARGS replaces the
# test selection below; KENPIN_ARM64_REUSE_VENV=1 keeps the last run's venv (a rerun of a few tests
# without minutes of downloads; the full check should start fresh). QEMU_CPU=cortex-a72 (default: a Pi 4, no dot-product instructions) or
# cortex-a76 (a Pi 5, with them) picks the emulated core: onnxruntime picks its int8 kernels by it,
# and step 6 prints each bundle's self-check table and the variant a station on that core runs.
# Emulated timings say nothing about a Pi's speed (qemu-user translates every instruction).
set -euo pipefail

ROOT=$(realpath "${1:-/tmp/arm64root}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
CHECK=/opt/kenpin-check
VENV=/opt/kenpin-venv

# Torch-free station tests. Excluded, because they need the train side (torch, onnx, scipy,
# scikit-learn, tqdm, scikit-image are not on the Pi): test_parity, test_quality_gate (trains a
# ranker), test_station_demo (trains), test_scoring (training.coreset/calibrate), test_preprocess
# (scikit-image sample image), test_cli/test_recipe/test_synthetic_line/test_metric_*/test_rank*/
# test_pair_sampling/test_backbone/test_realdata (training), test_browser and test_fuzz_api
# (playwright, schemathesis: dev tools), and in test_bundle the two tests that retrain or read
# the graph with onnx. test_station_bench reads the MAC count from the bundle's manifest.
TESTS=(
  tests/test_device_no_torch.py tests/test_station_config.py tests/test_store.py
  tests/test_bundle.py tests/test_station_pipeline.py tests/test_station_gpio.py
  tests/test_station_service.py tests/test_durability.py tests/test_mqtt.py tests/test_dashboard.py
  tests/test_station_bench.py tests/test_bundle_archive.py tests/test_body_limit.py tests/test_selfcheck.py
  tests/test_picamera2.py tests/test_preprocess_exact.py
  --deselect tests/test_bundle.py::test_failed_training_leaves_the_previous_bundle_untouched
  --deselect tests/test_bundle.py::test_int8_model_keeps_the_stem_in_fp32_and_quantizes_the_rest
  --deselect tests/test_selfcheck.py::test_a_variant_with_corrupted_scales_is_refused_and_the_station_falls_back
  --deselect tests/test_station_pipeline.py::test_the_daemon_records_the_scores_kenpin_eval_reports
)
# (test_selfcheck's rewrites an ONNX graph with the onnx package, which the Pi does not install;
# the daemon-vs-eval test scores through kenpin eval, whose metrics need scikit-learn: the train side)
QEMU_CPU=${QEMU_CPU:-cortex-a72}
case "$QEMU_CPU" in  # what the emulated core reports in /proc/cpuinfo (see below)
  cortex-a72) CPU_PART=0xd08; CPU_FEATURES="fp asimd evtstrm crc32 cpuid" ;;
  cortex-a76) CPU_PART=0xd0b; CPU_FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  *) die "QEMU_CPU=$QEMU_CPU: use cortex-a72 (Pi 4) or cortex-a76 (Pi 5)" ;;
esac
export QEMU_CPU

say() { printf '\n== %s\n' "$*"; }
die() { echo "arm64_check: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (chroot and bind mounts)"
[ -x "$ROOT/usr/bin/python3" ] || die "$ROOT has no /usr/bin/python3: make the tree first (see the header)"
MACHINE=$(chroot "$ROOT" /usr/bin/python3 -c 'import platform; print(platform.machine())') ||
  die "cannot run the tree's python3: is binfmt_misc registered for qemu-aarch64?"
[ "$MACHINE" = aarch64 ] || die "the tree's python3 reports $MACHINE, not aarch64"

MOUNTED=()
cleanup() { for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[i]}" || true; done; }
trap cleanup EXIT
for d in proc sys dev; do
  if ! mountpoint -q "$ROOT/$d"; then mount --bind "/$d" "$ROOT/$d"; MOUNTED+=("$ROOT/$d"); fi
done
# qemu-user (7.2 here) shows the tree the host's x86 /proc/cpuinfo; onnxruntime's CPU probe
# (pytorch/cpuinfo) finds no Arm core in it and segfaults on import. Lay an aarch64 one over it:
# the emulated core's entry (QEMU_CPU) per host CPU (a real Pi has its own).
if ! grep -q "CPU implementer" "$ROOT/proc/cpuinfo"; then
  mkdir -p "$ROOT$CHECK"
  for ((i=0; i<$(nproc --all); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$CPU_FEATURES"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$CPU_PART"
  done > "$ROOT$CHECK/cpuinfo"
  mount --bind "$ROOT$CHECK/cpuinfo" "$ROOT/proc/cpuinfo"; MOUNTED+=("$ROOT/proc/cpuinfo")
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
CA=""
for f in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$f" ] && [ -f "$f" ]; then cp "$f" "$ROOT/etc/ssl/host-ca-bundle.crt"; CA=/etc/ssl/host-ca-bundle.crt; break; fi
done

# Everything in the tree runs with a clean environment (this host's pip settings point at paths
# that do not exist there) at the lowest priority.
in_tree() {
  nice -n 19 chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$QEMU_CPU" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 ${CA:+PIP_CERT=$CA SSL_CERT_FILE=$CA REQUESTS_CA_BUNDLE=$CA} "$@"
}

say "1. tiny line and bundle (built here, where torch is)"
PREBUILT=$ROOT$CHECK/prebuilt
rm -rf "$PREBUILT"
mkdir -p "$PREBUILT"
if [ -n "${KENPIN_TEST_PREBUILT:-}" ]; then
  cp -a "$KENPIN_TEST_PREBUILT"/. "$PREBUILT"/
else
  [ -x "$REPO/.venv/bin/python" ] || die "no $REPO/.venv: run scripts/setup.sh (the tiny bundle is trained with torch)"
  (cd "$REPO" && nice -n 19 .venv/bin/python -c \
    "import sys; from pathlib import Path; from tests.conftest import build_prebuilt; build_prebuilt(Path(sys.argv[1]))" \
    "$PREBUILT")
fi
if [ -n "${KENPIN_ARM64_TIME_BUNDLE:-}" ]; then
  rm -rf "$ROOT$CHECK/time-bundle"; cp -a "$KENPIN_ARM64_TIME_BUNDLE" "$ROOT$CHECK/time-bundle"
fi

say "2. the repo, ${KENPIN_REF:-working tree}, into $ROOT$CHECK/src"
SRC=$ROOT$CHECK/src
rm -rf "$SRC"
mkdir -p "$SRC"
if [ -n "${KENPIN_REF:-}" ]; then
  git -C "$REPO" archive "$KENPIN_REF" | tar -x -C "$SRC"
  git -C "$REPO" rev-parse "$KENPIN_REF" > "$ROOT$CHECK/commit"
else
  (cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' |
    tar --null -T - -cf -) | tar -x -C "$SRC"
  echo "working tree at $(git -C "$REPO" rev-parse HEAD)" > "$ROOT$CHECK/commit"
fi

say "3-4. venv and pip install (emulated: minutes)"
if ! in_tree /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
  in_tree apt-get update -q && in_tree apt-get install -y -q python3-venv
fi
if ! in_tree /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then die "python3-venv is still missing in $ROOT"; fi
# The MQTT tests need a broker; they skip cleanly where apt cannot install one.
if ! in_tree sh -c 'command -v mosquitto || test -x /usr/sbin/mosquitto' >/dev/null; then
  { in_tree apt-get update -q && in_tree apt-get install -y -q mosquitto; } || echo "(no mosquitto: test_mqtt will skip)"
fi
if [ "${KENPIN_ARM64_REUSE_VENV:-0}" = 1 ] && [ -x "$ROOT$VENV/bin/python" ]; then
  # A rerun of a few tests: keep the last run's dependencies, replace only kenpin itself.
  in_tree "$VENV/bin/pip" install --progress-bar off --no-deps --force-reinstall "$CHECK/src"
else
  rm -rf "${ROOT:?}$VENV"  # a fresh venv each time: what the install pulls in is what the tests get
  in_tree /usr/bin/python3 -m venv "$VENV"
  time in_tree "$VENV/bin/pip" install --progress-bar off "$CHECK/src[pi]" "pytest>=8" "httpx>=0.27"
fi
in_tree "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, platform, sys
print("platform.machine():", platform.machine(), "| python", sys.version.split()[0])
for name in ("onnxruntime", "opencv-python-headless", "numpy", "fastapi", "uvicorn", "paho-mqtt", "gpiozero", "pytest"):
    print(f"  {name} {md.version(name)}")
try:
    md.version("torch")
    sys.exit("torch is installed in the station venv: it must not be")
except md.PackageNotFoundError:
    print("  torch: not installed (as on the Pi)")
EOF

say "5. torch-free station tests under emulation"
if [ -n "${KENPIN_ARM64_PYTEST_ARGS:-}" ]; then read -r -a TESTS <<< "$KENPIN_ARM64_PYTEST_ARGS"; fi
set +e
time in_tree sh -c "cd $CHECK/src && KENPIN_TEST_PREBUILT=$CHECK/prebuilt $VENV/bin/python -m pytest -q -p no:cacheprovider --durations=8 $(printf '%q ' "${TESTS[@]}")"
rc=$?
set -e

say "int8 inference time under emulation (NOT a Pi figure)"
in_tree sh -c "cd $CHECK/src && $VENV/bin/python -" <<EOF
import statistics, time
from pathlib import Path
from device.images import list_images, read_rgb
from device.runtime import Inspector

rgb = read_rgb(list_images(Path("$CHECK/prebuilt/line/test/good"))[0])
for name in ("prebuilt/tiny", "time-bundle"):
    root = Path("$CHECK") / name
    if not root.is_dir():
        continue
    t0 = time.perf_counter()
    insp = Inspector.open(root, "int8", threads=1)
    opened = time.perf_counter() - t0
    x = insp.preprocess(rgb)
    insp.embedder(x)  # warm-up
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        insp.embedder(x)
        runs.append(time.perf_counter() - t0)
    insp.inspect(rgb)
    t0 = time.perf_counter()
    v = insp.inspect(rgb)
    whole = time.perf_counter() - t0
    pp = insp.preprocess
    print(f"{name} ({pp.width}x{pp.height} input): open+verify {opened:.2f} s; one int8 ORT run median "
          f"{statistics.median(runs)*1e3:.0f} ms (min {min(runs)*1e3:.0f}, 5 runs, 1 thread); "
          f"whole inspect (preprocess+embed+search) {whole*1e3:.0f} ms; verdict {v.verdict}, score {v.score:.3f}")
EOF

say "6. the station's self-check on the emulated $QEMU_CPU (kenpin verify: parity on the probes, the variant run)"
for name in prebuilt/tiny time-bundle; do
  [ -d "$ROOT$CHECK/$name" ] || continue
  in_tree sh -c "cd $CHECK/src && $VENV/bin/python -m kenpin.cli verify --bundle $CHECK/$name --threads 1 \
    --json $CHECK/verify-$(basename $name)-$QEMU_CPU.json" || echo "(kenpin verify exit $?: see above)"
done
exit $rc
