#!/bin/sh
# Kuasar vmm demo: a pod that is a QEMU virtual machine whose PID 1 is our guest agent (vmm-task);
# its two containers run with runc inside the guest. Driven through the Sandbox API and Task API by
# kuasar-ctl, through the host task relay (vmm-task-relay), exactly as containerd 2.x would.
#
#   sudo examples/vmm/demo.sh     (needs qemu-system-x86_64; builds the guest image into /var/lib/kuasar
#                                  once, where a hand-started vmm-sandboxer finds it without a config)
#
# Without KVM the VM runs under TCG emulation: a boot takes ~10 s and runc in the guest ~2-3 s.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
kind=vmm
leftovers=/tmp/kuasar-demo/logs   # the log_directory of examples/pod.yaml
images=${KUASAR_GUEST_IMAGE_DIR:-/var/lib/kuasar}
. "$repo/examples/lib.sh"

rm -rf "$leftovers"
step "guest image: kernel + initrd with vmm-task as PID 1 (Debian packages; cached in $images)"
"$repo/vmm-task/build-image.sh" "$images"
ls -l "$images/vmlinux.bin" "$images/kuasar.initrd"

step "building the busybox image stand-in"
sh "$repo/hack/make-busybox-rootfs.sh" "$work/images/busybox" >/dev/null

step "start vmm-sandboxer (QEMU q35, accel auto: KVM where it can run the guest, else TCG; vmm-task-relay alongside)"
sed "s#/var/lib/kuasar/#$images/#" "$repo/vmm-sandboxer/config_qemu.toml" > "$work/config_qemu.toml"
start_sandboxer "$work/sandboxer.log" vmm-sandboxer --listen "$sock" --dir "$work/dir" \
    --config "$work/config_qemu.toml" --log-level info
grep -o "accel auto -> .*" "$work/sandboxer.log" || true

step "kuasar-ctl run examples/pod.yaml examples/busybox.yaml   (boots the VM, then runc in the guest)"
set -- $(ctl run "$repo/examples/pod.yaml" "$repo/examples/busybox.yaml")
pod=$1 web=$2
grep "ready: QEMU" "$work/sandboxer.log" | sed 's/.*sandbox [0-9a-f]* //'

step "a second container in the same VM, talking to the first over the pod's loopback"
client=$(ctl create "$pod" "$repo/examples/busybox-2.yaml" "$repo/examples/pod.yaml")
ctl start "$client" >/dev/null
ctl ps
sleep 8

step "their output: the guest's kernel, not the host's ($(uname -r))"
ctl exec "$web" -- uname -r
ctl logs "$web" | head -3
ctl logs "$client" | head -6

step "exec into a container (exit code passthrough) and a command in the guest itself (vm-exec)"
set +e
ctl exec "$client" -- sh -c 'echo "inside the container: $(hostname)"; exit 3'
echo "exit code: $?"
set -e
ctl vm-exec "$pod" -- sh -c 'echo "in the guest: PID 1 is $(tr "\\0" " " </proc/1/cmdline), $(nproc) vCPU, $(free -m | awk "/Mem/{print \$2}") MiB"'

step "remove everything (the VM is stopped, nothing is left)"
ctl rmp "$pod"
ctl pods
echo; echo done.
