#!/bin/sh
# Kuasar quark demo: a pod whose two containers run inside ONE application kernel (gVisor's Sentry,
# runsc --platform=ptrace), driven through the Sandbox API and Task API by kuasar-ctl.
#
#   sudo examples/quark/demo.sh      (uses kuasar-ctl / quark-sandboxer from PATH or ./.venv/bin; needs runsc)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d /tmp/kuasar-quark-demo.XXXXXX)
sock="$work/quark-sandboxer.sock"
ctl() { kuasar-ctl -s quark --endpoint "$sock" --root "$work/ctl" --images "$work/images" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

sandboxer_pid=""
cleanup() {
    set +e
    if [ -n "$sandboxer_pid" ]; then
        for pod in $(ctl pods -q 2>/dev/null); do ctl rmp "$pod" >/dev/null; done
        kill -TERM "$sandboxer_pid" 2>/dev/null
        wait "$sandboxer_pid" 2>/dev/null
        # quark-task outlives the sandboxer on purpose (restart promise); the demo stops it too
        for pid in $(pgrep -f "quark-task .*$work/dir"); do kill -TERM "$pid"; done
    fi
    rm -rf "$work" /tmp/kuasar-quark-vol
}
trap cleanup EXIT INT TERM

step "building the busybox image stand-in"
sh "$repo/hack/make-busybox-rootfs.sh" "$work/images/busybox" >/dev/null
mkdir -p /tmp/kuasar-quark-vol
uname -r > /tmp/kuasar-quark-vol/host-kernel

step "start quark-sandboxer (gVisor runsc, ptrace platform; its quark-task server is started alongside)"
quark-sandboxer --listen "$sock" --dir "$work/dir" --config "$here/config_quark.toml" --log-level warn &
sandboxer_pid=$!
while [ ! -S "$sock" ]; do sleep 0.1; done

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
