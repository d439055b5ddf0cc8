#!/usr/bin/env bash
# The whole test suite (what CI runs): set up the machine, then every tox environment that CI needs.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
