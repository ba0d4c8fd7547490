#!/bin/sh
# First boot of the Foresight marketplace AMI under marketplace/aws/template.py's stack: mint the TLS files
# and the first API key inside the service image (`python -m marketplace.aws.first_boot`, which also puts the
# key into the stack's secret), then hand foresight.service its settings and start it. The AMI's unit waits
# for /etc/foresight/foresight.env, so the service cannot start before its certificate and tenants exist.
#
#   first_boot.sh <secret arn> <tenant> <elastic ip> <service uid:gid>
set -eu

if [ "$#" -ne 4 ]; then
  echo "usage: first_boot.sh <secret arn> <tenant> <elastic ip> <service uid:gid>" >&2
  exit 2
fi
secret_arn=$1
tenant=$2
public_ip=$3
service_ids=$4
conf=/etc/foresight/conf
env_file=/etc/foresight/foresight.env
staged_env=$env_file.first-boot

# Once tenants.json exists the key is in the secret and the files stay as they are.
if [ ! -s "$conf/tenants.json" ]; then
  install -d -m 0700 -o "${service_ids%:*}" -g "${service_ids#*:}" "$conf"
  # FORESIGHT_IMAGE: the service image the AMI build loaded.
  # shellcheck source=/dev/null
  . /etc/foresight/image.env
  docker run --rm --user "$service_ids" --volume "$conf:/out" \
    --entrypoint /opt/foresight/bin/python "$FORESIGHT_IMAGE" -m marketplace.aws.first_boot \
    --out /out --tenant "$tenant" --secret-arn "$secret_arn" --public-ip "$public_ip"
fi
chmod 0400 "$conf/tls.key"
if [ -e "$staged_env" ]; then
  install -m 0640 -o root -g root "$staged_env" "$env_file"
  rm -f "$staged_env"
fi
systemctl daemon-reload
systemctl start foresight.service
