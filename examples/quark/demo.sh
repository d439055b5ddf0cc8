#!/bin/sh
# Kuasar quark demo: a pod whose two containers run inside ONE application kernel (gVisor's Sentry,
# runsc --platform=ptrace), driven through the Sandbox API and Task API by kuasar-ctl.
#
#   sudo examples/quark/demo.sh      (uses kuasar-ctl / quark-sandboxer from PATH or ./.venv/bin; needs runsc)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
kind=quark
leftovers="/tmp/kuasar-quark-vol /tmp/kuasar-demo/logs"   # the volume and examples/pod.yaml's log_directory
. "$repo/examples/lib.sh"

step "building the busybox image stand-in"
sh "$repo/hack/make-busybox-rootfs.sh" "$work/images/busybox" >/dev/null
mkdir -p /tmp/kuasar-quark-vol
uname -r > /tmp/kuasar-quark-vol/host-kernel

step "start quark-sandboxer (gVisor runsc, ptrace platform; its quark-task server is started alongside)"
start_sandboxer - quark-sandboxer --listen "$sock" --dir "$work/dir" --config "$here/config_quark.toml" --log-level warn

step "one pod, two containers sharing a volume"
sed 's/name: kernel-check/name: kernel-check-2/; s/kernel-check.log/kernel-check-2.log/' \
    "$here/shared-volume.yaml" > "$work/second.yaml"
pod=$(ctl runp "$repo/examples/pod.yaml")
c1=$(ctl create "$pod" "$here/shared-volume.yaml" "$repo/examples/pod.yaml")
ctl start "$c1" >/dev/null
c2=$(ctl create "$pod" "$work/second.yaml" "$repo/examples/pod.yaml")
ctl start "$c2" >/dev/null
ctl ps
sleep 2

step "their output: the pod's kernel, not the host's"
ctl logs "$c1"; ctl logs "$c2"

step "exec into the second container: exit code passthrough"
set +e
ctl exec "$c2" -- sh -c 'echo "inside: $(uname -sr)"; exit 3'
echo "exit code: $?"
set -e

step "remove everything"
ctl rmp "$pod"
ctl pods
echo; echo done.
