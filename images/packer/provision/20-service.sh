#!/usr/bin/env bash
# Load the service image, install foresight.service, foresight-first-boot.service, the TLS renewal's unit and
# timer, and the first-boot settings for cloud-init.
# Expects the file provisioners' uploads: images/packer/files/ in /tmp/foresight-files/ and the
# service image archive (docker save / podman save) at /tmp/foresight-image.tar.
#
# env: FORESIGHT_IMAGE  the tag inside the archive (e.g. localhost/foresight:0.1.0)
set -euo pipefail
: "${FORESIGHT_IMAGE:?set FORESIGHT_IMAGE to the tag inside the image archive}"
files=/tmp/foresight-files
service_uid=10001 # the non-root user inside the service image

docker load --input /tmp/foresight-image.tar
rm -f /tmp/foresight-image.tar
docker image inspect "$FORESIGHT_IMAGE" >/dev/null

install -d -m 0755 /etc/foresight
printf 'FORESIGHT_IMAGE=%s\n' "$FORESIGHT_IMAGE" > /etc/foresight/image.env
install -d -m 0700 -o "$service_uid" -g "$service_uid" /var/lib/foresight
install -m 0644 "$files/foresight.service" /etc/systemd/system/foresight.service
install -m 0644 "$files/foresight-first-boot.service" /etc/systemd/system/foresight-first-boot.service
install -m 0644 "$files/foresight-tls-renew.service" /etc/systemd/system/foresight-tls-renew.service
install -m 0644 "$files/foresight-tls-renew.timer" /etc/systemd/system/foresight-tls-renew.timer
install -d -m 0755 /etc/cloud/cloud.cfg.d
install -m 0644 "$files/99-foresight-hardening.cfg" /etc/cloud/cloud.cfg.d/99-foresight-hardening.cfg
systemctl daemon-reload
systemctl enable foresight.service foresight-first-boot.service foresight-tls-renew.timer

# The image runs: its CLI answers, and on a GPU builder torch sees the GPU through the nvidia runtime.
docker run --rm --entrypoint /opt/foresight/bin/foresight "$FORESIGHT_IMAGE" --help >/dev/null
if command -v nvidia-smi >/dev/null && nvidia-smi --list-gpus >/dev/null 2>&1; then
  docker run --rm --gpus all --entrypoint /opt/foresight/bin/python "$FORESIGHT_IMAGE" \
    -c 'import torch; assert torch.cuda.is_available(), "CUDA not available"; print(torch.cuda.get_device_name(0))'
else
  echo "no GPU on this builder: skipped the CUDA check"
fi
