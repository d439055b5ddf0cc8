#!/usr/bin/env bash
# The demo (README): set up the machine, then start each sandboxer and run real pods through the
# Sandbox API (gRPC) and Task API (ttrpc): runc, then WebAssembly (wasmtime), then gVisor (quark).
# Pass one of runc|wasm|quark to run only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
which=${1:-all}
if [ "$which" = all ] || [ "$which" = runc ]; then examples/demo.sh; fi
if [ "$which" = all ] || [ "$which" = wasm ]; then examples/wasm/demo.sh; fi
if [ "$which" = all ] || [ "$which" = quark ]; then examples/quark/demo.sh; fi
