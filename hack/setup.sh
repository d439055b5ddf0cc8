#!/usr/bin/env bash
# Prepare a fresh Debian 12 or openEuler machine for the demo and the tests:
# system packages (apt or dnf, only when missing) and a virtualenv at .venv with every package
# of this repository installed in editable mode. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (containers, namespaces and mounts need it); try: sudo $0" >&2
  exit 1
fi

need_bins=(runc busybox ip python3)
deb_pkgs=(runc busybox-static iproute2 python3 python3-venv python3-protobuf)
rpm_pkgs=(runc busybox iproute python3 python3-protobuf)
missing=0
for b in "${need_bins[@]}"; do command -v "$b" >/dev/null 2>&1 || missing=1; done
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip, google.protobuf' 2>/dev/null || missing=1
if [ "$missing" = 1 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages with apt: ${deb_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${deb_pkgs[@]}" >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    echo "setup: installing system packages with dnf: ${rpm_pkgs[*]}"
    dnf install -y -q "${rpm_pkgs[@]}"
  else
    echo "setup: neither apt-get nor dnf found; install: ${deb_pkgs[*]}" >&2
    exit 1
  fi
fi

PY=${KUASAR_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.kuasar-setup
want=$(cat hack/setup.sh */pyproject.toml hack/requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -r hack/requirements-test.txt \
    -e shared -e runc-task -e runc-sandboxer 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import kuasar_shared, kuasar_runc_sandboxer, kuasar_runc_task'
  echo "$want" > "$stamp"
fi
