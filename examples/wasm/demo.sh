#!/bin/sh
# Kuasar wasm demo: a pod with two WebAssembly containers on wasmtime, driven through the Sandbox
# API (gRPC) and Task API (ttrpc) by kuasar-ctl exactly as containerd 2.x would.
#
#   sudo examples/wasm/demo.sh      (uses kuasar-ctl / wasm-sandboxer from PATH or ./.venv/bin;
#                                    needs clang, lld, wasi-libc, libclang-rt-dev-wasm32)
#
# Compiles hello.c to WebAssembly, starts wasm-sandboxer on a private socket and directory, runs
# the pod, shows the modules' output, execs another module, removes everything.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d /tmp/kuasar-wasm-demo.XXXXXX)
sock="$work/wasm-sandboxer.sock"
ctl() { kuasar-ctl -s wasm --endpoint "$sock" --root "$work/ctl" --images "$work/images" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

sandboxer_pid=""
cleanup() {
    set +e
    if [ -n "$sandboxer_pid" ]; then
        for pod in $(ctl pods -q 2>/dev/null); do ctl rmp "$pod" >/dev/null; done
        kill -TERM "$sandboxer_pid" 2>/dev/null
        wait "$sandboxer_pid" 2>/dev/null
        # wasm-task outlives the sandboxer on purpose (restart promise); the demo stops it too
        for pid in $(pgrep -f "wasm-task .*$work/dir"); do kill -TERM "$pid"; done
    fi
    rm -rf "$work" /tmp/kuasar-demo/wasm-logs
}
trap cleanup EXIT INT TERM

step "compile hello.c with clang --target=wasm32-wasi into the image rootfs"
mkdir -p "$work/images/wasm-demo/bin" "$work/images/wasm-demo/etc"
clang --target=wasm32-wasi -O2 -o "$work/images/wasm-demo/bin/hello.wasm" "$here/hello.c"
echo "this file was read through a WASI preopen" > "$work/images/wasm-demo/etc/motd.txt"
ls -l "$work/images/wasm-demo/bin"

step "start wasm-sandboxer (its wasm-task server is started alongside)"
wasm-sandboxer --listen "$sock" --dir "$work/dir" --log-level warn &
sandboxer_pid=$!
while [ ! -S "$sock" ]; do sleep 0.1; done

step "run the pod and two wasm containers"
pod=$(ctl runp "$here/pod.yaml")
c1=$(ctl create "$pod" "$here/hello.yaml" "$here/pod.yaml")
c2=$(ctl create "$pod" "$here/hello-2.yaml" "$here/pod.yaml")
ctl start "$c1" "$c2" >/dev/null
ctl pods; echo; ctl ps
sleep 3

step "their output (kuasar-ctl logs)"
ctl logs "$c1"; ctl logs "$c2"

step "exec another module in the first container: exit code passthrough"
set +e
ctl exec "$c1" -- /bin/hello.wasm exit 7
echo "exit code: $?"
set -e

step "remove everything"
ctl rmp "$pod"
ctl pods
