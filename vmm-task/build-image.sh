#!/bin/sh
# Build the vmm guest image into <outdir> (default /var/lib/kuasar): vmlinux.bin + kuasar.initrd.
# Cached: nothing is rebuilt while the Debian package versions and the agent sources are unchanged.
# Needs apt-get, apt-cache and dpkg (Debian/Ubuntu build host); any python3 >= 3.9 runs the builder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")  # this checkout: vmm-task's agent and the kuasar_shared package beside it
PYTHONPATH="$here/src:$repo/shared/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
exec python3 -m kuasar_vmm_task.image "$@"
