#!/bin/sh
# Mount the node's data volume at $MOUNT_POINT. $1 names the disk: a /dev path (Google Cloud's stable
# /dev/disk/by-id/google-<device name>), or a model (AWS: "Amazon Elastic Block Store", whose NVMe names
# change between boots), meaning the one whole disk of that model that is not the root disk and has no
# partitions. Formats it only if it carries no filesystem signature at all (first boot of a fresh, encrypted
# volume), and records it in /etc/fstab by label.
set -eu

DISK="$1"
OWNER="$2"
MOUNT_POINT=/var/lib/foresight
LABEL=foresight-data

root_disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)")
data_disk=""
case "$DISK" in
  /dev/*)
    # The device may appear a moment after boot.
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e "$DISK" ] && break; sleep 3; done
    if [ -e "$DISK" ]; then data_disk=$(readlink -f "$DISK"); fi
    if [ "$(basename "$data_disk")" = "$root_disk" ]; then data_disk=""; fi
    ;;
  *)
    for disk in $(lsblk -dpno NAME); do
      [ "$(basename "$disk")" = "$root_disk" ] && continue
      [ "$(lsblk -dno MODEL "$disk" | sed 's/ *$//')" = "$DISK" ] || continue
      [ "$(lsblk -no NAME "$disk" | wc -l)" -eq 1 ] || continue
      data_disk=$disk
    done
    ;;
esac
if [ -z "$data_disk" ]; then
  echo "mount_data_volume: no data disk '$DISK' besides the root disk" >&2
  exit 1
fi

if [ -z "$(blkid -p -o value -s TYPE "$data_disk" || true)" ]; then
  mkfs.ext4 -q -L "$LABEL" "$data_disk"
fi
mkdir -p "$MOUNT_POINT"
if ! grep -q "^LABEL=$LABEL " /etc/fstab; then
  echo "LABEL=$LABEL $MOUNT_POINT ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2" >> /etc/fstab
fi
mountpoint -q "$MOUNT_POINT" || mount "$MOUNT_POINT"
chown "$OWNER" "$MOUNT_POINT"
chmod 0770 "$MOUNT_POINT"
