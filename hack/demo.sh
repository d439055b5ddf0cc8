#!/usr/bin/env bash
# The demo (README): set up the machine, then run real runc pods through the Sandbox and Task APIs.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
PATH="$PWD/.venv/bin:$PATH" exec examples/demo.sh "$@"
