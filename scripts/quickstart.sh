#!/usr/bin/env bash
# Install Foresight and run the whole product locally (the README's first command): an embedded OpenBao,
# the service with TLS and at-rest encryption, a demo tenant and a demo workload. Extra arguments go to
# `foresight local up` (e.g. --json). Stop it with `.venv/bin/foresight local down`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
exec .venv/bin/foresight local up "$@"
