#!/usr/bin/env bash
# Install Foresight and run it locally (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
exec .venv/bin/foresight serve --dev "$@"
