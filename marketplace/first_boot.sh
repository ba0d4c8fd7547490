#!/bin/sh
# First boot of a Foresight marketplace node, on any cloud: mint the TLS files and the first API key inside
# the service image (`python -m marketplace.<cloud>.first_boot`, which also hands the key to the buyer through
# the cloud's secret store and keeps the CA's key wrapped by the node's KMS key, for renewals), then give
# foresight.service its settings (naming the metrics scrape token's file when first boot wrote one) and start it.
# The image's unit waits for /etc/foresight/foresight.env, so the service cannot start before its certificate and
# tenants exist.
# The image's foresight-first-boot.service runs this, after mount_data_volume.sh, on every boot until it succeeds;
# it is safe to run again (a run cut short before tenants.json mints again).
#
#   first_boot.sh <cloud> <service uid:gid> <the cloud's first_boot options...>
set -eu

if [ "$#" -lt 2 ]; then
  echo "usage: first_boot.sh <cloud> <service uid:gid> <the cloud's first_boot options...>" >&2
  exit 2
fi
cloud=$1
service_ids=$2
shift 2
etc=/etc/foresight
# foresight.service mounts it at the same path in the container, so the settings name it by its host path.
conf=$etc/conf
env_file=$etc/foresight.env
staged_env=$env_file.first-boot
data_dir=/var/lib/foresight

# Snapshots, checkpoints and the audit log belong on the data volume: without it mounted, neither mint a key nor
# start a service that would write them to the root disk.
if ! mountpoint -q "$data_dir"; then
  echo "first_boot: $data_dir is not a mount point (the data volume is not mounted); nothing minted or started" >&2
  exit 1
fi

# Once tenants.json exists the key is in the secret store and the files stay as they are.
if [ ! -s "$conf/tenants.json" ]; then
  install -d -m 0700 -o "${service_ids%:*}" -g "${service_ids#*:}" "$conf"
  # FORESIGHT_IMAGE: the service image the VM image build loaded.
  # shellcheck source=/dev/null
  . "$etc/image.env"
  # Host networking: the node's identity comes from the metadata service at 169.254.169.254. The service's own
  # settings name the KMS key that wraps the CA's key.
  docker run --rm --network host --user "$service_ids" --volume "$conf:/out" --env-file "$staged_env" \
    --entrypoint /opt/foresight/bin/python "$FORESIGHT_IMAGE" -m "marketplace.$cloud.first_boot" --out /out "$@"
fi
chmod 0400 "$conf/tls.key"
if [ -e "$staged_env" ]; then
  # Only when first boot wrote the file (a service image from before scrape tokens does not): the service refuses
  # to start with a metrics_token_file it cannot read. A run cut short after this may have added it already.
  if [ -s "$conf/metrics.token" ] && ! grep -q '^FORESIGHT_METRICS_TOKEN_FILE=' "$staged_env"; then
    echo "FORESIGHT_METRICS_TOKEN_FILE=$conf/metrics.token" >>"$staged_env"
  fi
  install -m 0640 -o root -g root "$staged_env" "$env_file"
  rm -f "$staged_env"
fi
systemctl daemon-reload
# --no-block: foresight.service is ordered after foresight-first-boot.service, which is still running this.
systemctl start --no-block foresight.service
