#!/bin/sh
# Mount the node's data volume at $MOUNT_POINT. $1 names the disk: a /dev path (Google Cloud's stable
# /dev/disk/by-id/google-<device name>), or a model (AWS: "Amazon Elastic Block Store", whose NVMe names
# change between boots), meaning the one whole disk of that model that is not the root disk and has no
# partitions. Formats it only if blkid finds no signature on it at all (no file system, no partition table)
# and it has no partitions: the first boot of a fresh, encrypted volume. A disk that already carries the
# ext4 file system labelled $LABEL is mounted as it is; anything else stops the script with an error, so
# that nobody's data is formatted away. Records the mount in /etc/fstab by label.
set -eu

DISK="$1"
OWNER="$2"
MOUNT_POINT=/var/lib/foresight
LABEL=foresight-data
FSTAB="${FORESIGHT_FSTAB:-/etc/fstab}" # tests point this at a scratch file

fail() {
  echo "mount_data_volume: $*" >&2
  exit 1
}

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
  fail "no data disk '$DISK' besides the root disk"
fi

# blkid -p reads the disk itself (no cache): exit 0 when it finds a signature (a file system, a partition
# table, a RAID or LVM member), 2 when it finds none. Any other exit is an error, never "blank".
probe_status=0
probe=$(blkid -p -o export "$data_disk") || probe_status=$?
case "$probe_status" in
  2)
    # lsblk lists the disk and then each partition: one line means no partitions.
    if [ "$(lsblk -no NAME "$data_disk" | wc -l)" -ne 1 ]; then
      fail "$data_disk has partitions; not formatting it"
    fi
    mkfs.ext4 -q -L "$LABEL" "$data_disk"
    ;;
  0)
    if ! printf '%s\n' "$probe" | grep -qx 'TYPE=ext4' || ! printf '%s\n' "$probe" | grep -qx "LABEL=$LABEL"; then
      found=$(printf '%s\n' "$probe" | grep -E '^(PTTYPE|TYPE|LABEL)=' | tr '\n' ' ' | sed 's/ $//')
      fail "$data_disk holds ${found:-a signature blkid could not name}, not the ext4 file system labelled $LABEL; not formatting or mounting it"
    fi
    ;;
  *)
    fail "blkid -p $data_disk failed (exit $probe_status); not formatting a disk it cannot read"
    ;;
esac
mkdir -p "$MOUNT_POINT"
if ! grep -q "^LABEL=$LABEL " "$FSTAB"; then
  echo "LABEL=$LABEL $MOUNT_POINT ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2" >> "$FSTAB"
fi
mountpoint -q "$MOUNT_POINT" || mount "$MOUNT_POINT"
chown "$OWNER" "$MOUNT_POINT"
chmod 0770 "$MOUNT_POINT"
