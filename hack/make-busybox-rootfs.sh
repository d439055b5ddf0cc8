#!/bin/sh
# Build a busybox root filesystem that stands in for a container image (no registry is reachable).
#
#   hack/make-busybox-rootfs.sh [OUTPUT_DIR]      default /var/lib/kuasar-ctl/images/busybox
#
# Uses Debian's busybox-static (installed with apt-get when missing). Idempotent: an existing,
# complete rootfs is left as is; a partial one is completed.
set -eu

out="${1:-/var/lib/kuasar-ctl/images/busybox}"
busybox=/bin/busybox

# Debian's busybox-static provides a statically linked /bin/busybox (it must run in any rootfs).
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "make-busybox-rootfs: need busybox-static; run as root or: apt-get install busybox-static" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
fi

if [ -f "$out/.kuasar-rootfs-complete" ] && [ -x "$out/bin/sh" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$out"
cd "$out"
mkdir -p bin sbin usr/bin usr/sbin etc proc sys dev tmp root home run var/log work data
chmod 1777 tmp
cp -f "$busybox" bin/busybox
chmod 0755 bin/busybox
for applet in $(bin/busybox --list-full); do
    dir=$(dirname "$applet")
    [ "$applet" = "bin/busybox" ] || [ "$dir" = "." ] && continue
    mkdir -p "$dir"
    if [ ! -e "$applet" ] && [ ! -L "$applet" ]; then
        case "$dir" in
            bin) ln -s busybox "$applet" ;;
            sbin) ln -s ../bin/busybox "$applet" ;;
            *) ln -s ../../bin/busybox "$applet" ;;
        esac
    fi
done
cat > etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
PASSWD
cat > etc/group <<'GROUP'
root:x:0:
daemon:x:1:
tty:x:5:
nogroup:x:65534:
GROUP
echo "hosts: files dns" > etc/nsswitch.conf
: > etc/hostname
: > etc/hosts
: > etc/resolv.conf
touch .kuasar-rootfs-complete
echo "$out"
