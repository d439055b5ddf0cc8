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

# runc: the runc type; busybox: image stand-in; gcc: the task front, the wasm type's native runner and runc's
# sandbox-parent helper (built by pip and by rpmbuild); clang/lld/wasi-libc: wasm test modules; runsc: the quark
# type (gVisor); qemu: the vmm type; containerd: the shim v2 baseline of the benchmarks; rpm, systemd and
# the distribution's python3-* packages: building the RPMs and installing them into a throwaway root;
# make, flex, bison, bc, libelf and libssl headers, xz: building the vmm guest's kernel (vmm-task's image).
deb_pkgs=(runc busybox-static iproute2 python3 python3-venv python3-protobuf
          gcc clang lld wasi-libc libclang-rt-dev-wasm32 runsc qemu-system-x86 containerd
          rpm systemd python3-pip python3-setuptools python3-wheel python3-grpcio python3-h2 python3-pyroute2
          python3-daemon python3-yaml python3-tomli make flex bison bc libelf-dev libssl-dev xz-utils)
rpm_pkgs=(runc busybox iproute python3 python3-protobuf gcc clang lld qemu-system-x86_64 containerd
          make flex bison bc elfutils-libelf-devel openssl-devel xz)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${deb_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing system packages with apt: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
elif command -v dnf >/dev/null 2>&1; then
  missing=()
  for p in "${rpm_pkgs[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing system packages with dnf: ${missing[*]}"
    dnf install -y -q --skip-broken "${missing[@]}"
  fi
else
  echo "setup: neither apt-get nor dnf found; install: ${deb_pkgs[*]}" >&2
  exit 1
fi

PY=${KUASAR_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.kuasar-setup
# shared with its extra ctl: kuasar-ctl (PyYAML), which the demo and the tests drive
packages=(-e "shared[ctl]")
for d in runc-task runc-sandboxer wasm-sandboxer quark-sandboxer vmm-sandboxer vmm-task; do
  [ -f "$d/pyproject.toml" ] && packages+=(-e "$d")
done
# C sources count too: an editable install builds them (wasm-forkserver, sandbox-parent) only when pip runs
want=$(cat hack/setup.sh */pyproject.toml hack/requirements-test.txt \
         $(ls */setup.py shared/native_build.py shared/native/*.c */src/*/native/*.c 2>/dev/null) |
       sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  if ! .venv/bin/python -m pip install -q -r hack/requirements-test.txt "${packages[@]}" > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "setup: pip install failed (log above, also in .venv/pip.log)" >&2
    exit 1
  fi
  .venv/bin/python -c 'import kuasar_shared, kuasar_runc_sandboxer, kuasar_runc_task'
  .venv/bin/python -c 'from kuasar_runc_sandboxer.holder import executable; executable()'
  .venv/bin/python -c 'from kuasar_shared.sandbox.task_supervisor import front_executable; front_executable()'
  if [ -f wasm-sandboxer/pyproject.toml ]; then
    .venv/bin/python -c 'from kuasar_wasm_sandboxer.forkserver import executable; executable()'
  fi
  echo "$want" > "$stamp"
fi
