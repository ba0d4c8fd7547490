#!/bin/sh
# First boot of the Foresight marketplace image under marketplace/azure/template.py's managed application:
# mint the TLS files and the first API key inside the service image (`python -m marketplace.azure.first_boot`,
# which also sets the key into the application's Key Vault secret), then hand foresight.service its settings
# and start it. The image's unit waits for /etc/foresight/foresight.env, so the service cannot start before
# its certificate and tenants exist.
#
#   first_boot.sh <secret uri> <key vault audience> <identity client id> <tenant> <public ip> <dns name> \
#                 <private ip> <service uid:gid>
set -eu

if [ "$#" -ne 8 ]; then
  echo "usage: first_boot.sh <secret uri> <audience> <client id> <tenant> <public ip> <dns name> <private ip> <uid:gid>" >&2
  exit 2
fi
secret_uri=$1
resource=$2
client_id=$3
tenant=$4
public_ip=$5
dns_name=$6
private_ip=$7
service_ids=$8
conf=/etc/foresight/conf
env_file=/etc/foresight/foresight.env
staged_env=$env_file.first-boot

# Once tenants.json exists the key is in the secret and the files stay as they are.
if [ ! -s "$conf/tenants.json" ]; then
  install -d -m 0700 -o "${service_ids%:*}" -g "${service_ids#*:}" "$conf"
  # FORESIGHT_IMAGE: the service image the VM image build loaded.
  # shellcheck source=/dev/null
  . /etc/foresight/image.env
  # Host networking: the identity's token comes from the Instance Metadata Service at 169.254.169.254.
  docker run --rm --network host --user "$service_ids" --volume "$conf:/out" \
    --entrypoint /opt/foresight/bin/python "$FORESIGHT_IMAGE" -m marketplace.azure.first_boot \
    --out /out --tenant "$tenant" --secret-uri "$secret_uri" --resource "$resource" --client-id "$client_id" \
    --public-ip "$public_ip" --dns-name "$dns_name" --private-ip "$private_ip"
fi
chmod 0400 "$conf/tls.key"
if [ -e "$staged_env" ]; then
  install -m 0640 -o root -g root "$staged_env" "$env_file"
  rm -f "$staged_env"
fi
systemctl daemon-reload
systemctl start foresight.service
