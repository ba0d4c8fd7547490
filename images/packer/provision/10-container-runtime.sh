#!/usr/bin/env bash
# Docker and the NVIDIA container toolkit, with "nvidia" registered as a Docker runtime so that
# `docker run --gpus all` reaches the GPUs. Idempotent: the clouds' GPU images ship parts of this.
#
# env: NVIDIA_CTK_VERSION  toolkit package version to pin (e.g. 1.17.8-1); empty takes the newest
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update
if ! command -v docker >/dev/null; then
  apt-get install -y --no-install-recommends docker.io
fi

keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
repo_list=/etc/apt/sources.list.d/nvidia-container-toolkit.list
if [[ ! -f "$repo_list" ]]; then
  apt-get install -y --no-install-recommends ca-certificates curl gnupg
  curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor --yes -o "$keyring"
  curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
    | sed "s#deb https://#deb [signed-by=$keyring] https://#g" > "$repo_list"
  apt-get update
fi

pin=""
if [[ -n "${NVIDIA_CTK_VERSION:-}" ]]; then
  pin="=$NVIDIA_CTK_VERSION"
fi
apt-get install -y --no-install-recommends \
  "nvidia-container-toolkit$pin" "nvidia-container-toolkit-base$pin" \
  "libnvidia-container-tools$pin" "libnvidia-container1$pin"

nvidia-ctk runtime configure --runtime=docker
systemctl enable docker.service
systemctl restart docker.service
docker info --format '{{json .Runtimes}}' | grep -q nvidia
echo "docker $(docker version --format '{{.Server.Version}}') with the nvidia runtime"
