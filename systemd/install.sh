#!/usr/bin/env bash
# Install the kenpin station as a systemd service (run as root on the Pi):
#
#   sudo systemd/install.sh [--prefix /opt/kenpin] [--no-start]
#
# Creates the `kenpin` system user, a venv in PREFIX with the station's dependencies only (no
# torch), /etc/kenpin/station.yaml (from configs/station.yaml unless one exists), /var/lib/kenpin,
# and enables the unit. Re-running it upgrades kenpin in place and keeps the config and data.
set -euo pipefail
PREFIX=/opt/kenpin
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    *) echo "install.sh: unknown option $1 (expected --prefix DIR or --no-start)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 2; }
SRC="$(cd "$(dirname "$0")/.." && pwd)"
UNIT=/etc/systemd/system/kenpin-station.service

id kenpin >/dev/null 2>&1 || useradd --system --home-dir /var/lib/kenpin --shell /usr/sbin/nologin kenpin
for g in gpio video; do getent group "$g" >/dev/null && usermod -aG "$g" kenpin; done

mkdir -p "$PREFIX" /etc/kenpin /var/lib/kenpin
if [ "$SRC" != "$PREFIX" ]; then
  cp -a "$SRC/." "$PREFIX/"
fi
# --system-site-packages: picamera2 comes from apt (python3-picamera2), not PyPI.
[ -x "$PREFIX/.venv/bin/python" ] || python3 -m venv --system-site-packages "$PREFIX/.venv"
"$PREFIX/.venv/bin/python" -m pip install --quiet --upgrade pip
"$PREFIX/.venv/bin/python" -m pip install --quiet "$PREFIX[pi]"

if [ ! -f /etc/kenpin/station.yaml ]; then
  install -m 0640 -g kenpin "$PREFIX/configs/station.yaml" /etc/kenpin/station.yaml
  echo "wrote /etc/kenpin/station.yaml: set bundle.path and camera.* before starting"
  START=0
fi
chown -R kenpin:kenpin /var/lib/kenpin
chmod 0750 /var/lib/kenpin
sed "s|/opt/kenpin|$PREFIX|g" "$PREFIX/systemd/kenpin-station.service" > "$UNIT"
systemd-analyze verify "$UNIT" || true
systemctl daemon-reload
systemctl enable kenpin-station.service
if [ "$START" = 1 ]; then
  systemctl restart kenpin-station.service
  systemctl --no-pager status kenpin-station.service || true
fi
echo "logs: journalctl -u kenpin-station -f"
