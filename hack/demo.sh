#!/usr/bin/env bash
# The demo (README): set up the machine, then start each sandboxer and run real pods through the
# Sandbox API (gRPC) and Task API (ttrpc): runc, then WebAssembly (wasmtime), then gVisor (quark), then
# a QEMU microVM (vmm). Pass one of runc|wasm|quark|vmm to run only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
case "$which" in
    all|runc|wasm|quark|vmm) ;;
    *) echo "hack/demo.sh: unknown demo '$which' (expected runc, wasm, quark or vmm; none for all)" >&2; exit 2 ;;
esac
hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ "$which" = all ] || [ "$which" = runc ]; then examples/demo.sh; fi
if [ "$which" = all ] || [ "$which" = wasm ]; then examples/wasm/demo.sh; fi
if [ "$which" = all ] || [ "$which" = quark ]; then examples/quark/demo.sh; fi
if [ "$which" = all ] || [ "$which" = vmm ]; then examples/vmm/demo.sh; fi
