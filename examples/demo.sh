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
kind=runc
leftovers=/tmp/kuasar-demo/logs   # the log_directory of examples/pod.yaml
. "$repo/examples/lib.sh"

rm -rf "$leftovers"   # a previous run's logs
step "building the busybox image stand-in"
sh "$repo/hack/make-busybox-rootfs.sh" "$work/images/busybox"

step "starting runc-sandboxer (--listen $sock --dir $work/dir)"
start_sandboxer "$work/sandboxer.log" runc-sandboxer --listen "$sock" --dir "$work/dir" --log-level info

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
