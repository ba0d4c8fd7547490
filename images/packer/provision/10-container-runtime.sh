#!/usr/bin/env bash
# Docker and the NVIDIA container toolkit, with "nvidia" registered as a Docker runtime so that
# `docker run --gpus all` reaches the GPUs. Idempotent: the clouds' GPU images ship parts of this.
#
# The AWS, Google Cloud and Azure GPU bases already carry the toolkit, and Azure's HPC image holds it
# (apt-mark hold) and removes NVIDIA's apt list. Pinning it with `apt-get -y` over such a base aborts: a newer
# toolkit would be a downgrade, a held one a change of held packages. So a toolkit at or above
# NVIDIA_CTK_VERSION is kept as the base ships it. Only a missing toolkit is installed, or an older one upgraded,
# to exactly that version. An older toolkit the base holds is released, upgraded and held again: a deliberate
# choice, as the version is a floor for security fixes (1.17.8 fixes CVE-2025-23266).
#
# env: NVIDIA_CTK_VERSION  the lowest toolkit package version to keep, and the one installed when the base has
#                          none or an older one (e.g. 1.17.8-1); empty keeps any and installs the newest
set -euo pipefail

TOOLKIT_PACKAGES=(nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1)
KEYRING=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
REPO_LIST=/etc/apt/sources.list.d/nvidia-container-toolkit.list

# keep, install or upgrade: what the base image's toolkit needs to reach $1 (empty: any version will do).
toolkit_plan() {
  local minimum=$1 status
  # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
  status=$(dpkg-query -W -f='${db:Status-Status} ${Version}' nvidia-container-toolkit 2>/dev/null || true)
  if [[ "$status" != "installed "* ]]; then
    echo install
  elif [[ -z "$minimum" ]] || dpkg --compare-versions "${status#installed }" ge "$minimum"; then
    echo keep
  else
    echo upgrade
  fi
}

add_nvidia_repository() {
  if [[ ! -f "$REPO_LIST" ]]; then
    apt-get install -y --no-install-recommends ca-certificates curl gnupg
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor --yes -o "$KEYRING"
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
      | sed "s#deb https://#deb [signed-by=$KEYRING] https://#g" > "$REPO_LIST"
    apt-get update
  fi
}

# The toolkit's packages at version $1 (empty: the newest). Those the base holds are held again afterwards.
install_toolkit() {
  local version=$1 held=() package
  for package in $(apt-mark showhold); do
    if [[ " ${TOOLKIT_PACKAGES[*]} " == *" $package "* ]]; then
      held+=("$package")
    fi
  done
  add_nvidia_repository
  if ((${#held[@]} > 0)); then
    apt-mark unhold "${held[@]}"
  fi
  apt-get install -y --no-install-recommends "${TOOLKIT_PACKAGES[@]/%/${version:+=$version}}"
  if ((${#held[@]} > 0)); then
    apt-mark hold "${held[@]}"
  fi
}

main() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  if ! command -v docker >/dev/null; then
    apt-get install -y --no-install-recommends docker.io
  fi

  local minimum=${NVIDIA_CTK_VERSION:-}
  case "$(toolkit_plan "$minimum")" in
    keep) echo "keeping the base image's nvidia-container-toolkit (at least ${minimum:-any version})" ;;
    install | upgrade) install_toolkit "$minimum" ;;
  esac

  nvidia-ctk runtime configure --runtime=docker
  systemctl enable docker.service
  systemctl restart docker.service
  docker info --format '{{json .Runtimes}}' | grep -q nvidia
  echo "docker $(docker version --format '{{.Server.Version}}') with the nvidia runtime"
}

# Sourced (the tests do), it only defines the functions above.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
