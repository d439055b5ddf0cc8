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
kind=wasm
leftovers=/tmp/kuasar-demo/wasm-logs
. "$repo/examples/lib.sh"

step "compile hello.c with clang --target=wasm32-wasi into the image rootfs"
mkdir -p "$work/images/wasm-demo/bin" "$work/images/wasm-demo/etc"
clang --target=wasm32-wasi -O2 -o "$work/images/wasm-demo/bin/hello.wasm" "$here/hello.c"
echo "this file was read through a WASI preopen" > "$work/images/wasm-demo/etc/motd.txt"
ls -l "$work/images/wasm-demo/bin"

step "start wasm-sandboxer (its wasm-task server is started alongside)"
start_sandboxer - wasm-sandboxer --listen "$sock" --dir "$work/dir" --log-level warn

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
