#!/bin/sh
# Kuasar demo: a real runc pod with two containers that share the pod's namespaces, driven through
# the Sandbox API (gRPC) and Task API (ttrpc) by kuasar-ctl exactly as containerd 2.x would.
#
#   sudo examples/demo.sh            (uses kuasar-ctl / runc-sandboxer from PATH or ./.venv/bin)
#
# Starts runc-sandboxer on a private socket and directory, runs the pod, shows the containers'
# output, execs into one, removes everything and stops the sandboxer.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d /tmp/kuasar-demo.XXXXXX)
sock="$work/runc-sandboxer.sock"
ctl() { kuasar-ctl --endpoint "$sock" --root "$work/ctl" --images "$work/images" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

sandboxer_pid=""
cleanup() {
    set +e
    if [ -n "$sandboxer_pid" ]; then
        for pod in $(ctl pods -q 2>/dev/null); do ctl rmp "$pod" >/dev/null; done
        kill -TERM "$sandboxer_pid" 2>/dev/null
        wait "$sandboxer_pid" 2>/dev/null
        # runc-task outlives the sandboxer on purpose (restart promise); the demo stops it too
        for pid in $(pgrep -f "runc-task .*$work/dir"); do kill -TERM "$pid"; done
    fi
    rm -rf "$work" /tmp/kuasar-demo/logs
}
trap cleanup EXIT INT TERM

rm -rf /tmp/kuasar-demo/logs   # the log_directory of examples/pod.yaml
step "building the busybox image stand-in"
sh "$repo/hack/make-busybox-rootfs.sh" "$work/images/busybox"

step "starting runc-sandboxer (--listen $sock --dir $work/dir)"
runc-sandboxer --listen "$sock" --dir "$work/dir" --log-level info >"$work/sandboxer.log" 2>&1 &
sandboxer_pid=$!
i=0
while [ ! -S "$sock" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || { cat "$work/sandboxer.log"; exit 1; }
    sleep 0.1
done

step "kuasar-ctl run examples/pod.yaml examples/busybox.yaml   (runp + create + start)"
set -- $(ctl run "$here/pod.yaml" "$here/busybox.yaml")
pod=$1 web=$2
echo "pod $pod"
echo "web $web"

step "kuasar-ctl create + start the second container in the same pod"
client=$(ctl create "$pod" "$here/busybox-2.yaml" "$here/pod.yaml")
ctl start "$client" >/dev/null
echo "client $client"
sleep 3

step "kuasar-ctl pods / ps"
ctl pods
ctl ps

step "their output (kuasar-ctl logs)"
ctl logs "$web"
ctl logs "$client"

step "both containers share the pod's network, IPC and UTS namespaces"
for c in "$web" "$client"; do
    printf '%s: ' "$(echo "$c" | cut -c1-13)"
    ctl exec "$c" -- sh -c 'echo "$(hostname) net=$(readlink /proc/self/ns/net) ipc=$(readlink /proc/self/ns/ipc)"'
done

step "kuasar-ctl exec: exit codes pass through"
set +e
ctl exec "$web" -- sh -c 'echo "inside web, exiting with 42"; exit 42'
echo "exit code: $?"
set -e

step "removing everything (stop, rm, stopp, rmp)"
ctl stop "$web"
ctl rm "$web" "$client"
ctl stopp "$pod"
ctl rmp "$pod"
ctl pods
echo
echo "done."
