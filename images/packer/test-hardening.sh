#!/usr/bin/env bash
# Run the VM image's hardening for real, in a container standing in for the build VM: a Debian bookworm
# system with openssh-server and cloud-init, dirtied the way a build leaves a machine (authorized_keys,
# passwords, root login and password SSH allowed, host keys, machine-id, cloud-init state, logs and shell
# history). The verify gate must reject it before 80-harden.sh and pass it after. Then remove the container.
#
# usage: images/packer/test-hardening.sh      (KEEP_IMAGES=1 keeps the base image)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
images="$(dirname "$here")"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$images/containers.conf}"
base_image="localhost/foresight-base:bookworm"
container="foresight-harden-t$$"
started_at=$SECONDS

log() { printf '[test-hardening %3ss] %s\n' "$((SECONDS - started_at))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
cleanup() {
  local rc=$?
  podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
  if [[ "${KEEP_IMAGES:-0}" != 1 ]]; then
    podman rmi "$base_image" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

in_vm() { podman exec "$container" bash -c "$1"; }

"$images/local-base.sh" "$base_image" >/dev/null
podman run --detach --name "$container" --entrypoint sleep "$base_image" infinity >/dev/null
log "installing openssh-server and cloud-init in $container"
in_vm 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         openssh-server cloud-init passwd >/dev/null'

log "dirtying it the way a build leaves a VM"
# shellcheck disable=SC2016 # expands inside the container
in_vm 'set -e
  useradd --create-home --shell /bin/bash ubuntu
  echo "ubuntu:build-password" | chpasswd && echo "root:build-password" | chpasswd
  for home in /root /home/ubuntu; do
    install -d -m 0700 "$home/.ssh"
    echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeBuildKeyFakeBuildKeyFakeBuildKey0 packer" > "$home/.ssh/authorized_keys"
    echo "sudo docker load -i /tmp/foresight-image.tar" > "$home/.bash_history"
  done
  printf "PasswordAuthentication yes\nPermitRootLogin yes\n" > /etc/ssh/sshd_config.d/50-cloudimg-settings.conf
  printf "PermitRootLogin yes\n" >> /etc/ssh/sshd_config
  echo 0123456789abcdef0123456789abcdef > /etc/machine-id
  mkdir -p /var/lib/cloud/instances/i-0build && ln -sfn /var/lib/cloud/instances/i-0build /var/lib/cloud/instance
  echo "build log line" > /var/log/cloud-init.log && echo old | gzip > /var/log/syslog.2.gz'

podman cp "$here/files" "$container:/tmp/foresight-files"
podman cp "$here/provision" "$container:/opt/provision"

if output="$(in_vm /opt/provision/90-verify-hardening.sh 2>&1)"; then
  fail "the verify gate passed a dirty machine"
fi
for expected in "/root/.ssh/authorized_keys exists" "/home/ubuntu/.ssh/authorized_keys exists" \
                "account root has a usable password" "account ubuntu has a usable password" \
                "root's password is not locked" "expected 'passwordauthentication no'" \
                "expected 'permitrootlogin no'" "host keys from the build" "/etc/machine-id is not empty" \
                "cloud-init state from the build" "rotated logs remain" "/root/.bash_history holds shell history"; do
  grep -qF "$expected" <<<"$output" || fail "the verify gate missed: $expected; it said: $output"
done
log "verify gate rejects the dirty machine ($(grep -c 'NOT HARDENED' <<<"$output") problems found)"

in_vm /opt/provision/80-harden.sh >&2
in_vm /opt/provision/90-verify-hardening.sh >&2 || fail "the verify gate rejects the hardened machine"
# The scanners' own view, independent of the gate's code.
# shellcheck disable=SC2016 # expands inside the container
in_vm 'set -e
  test -z "$(find / -xdev -name authorized_keys -print -quit)"
  test "$(passwd --status root | cut -d" " -f2)" = L
  ! grep -vE "^[^:]*:[!*]" /etc/shadow
  test ! -s /etc/machine-id
  test -z "$(find /var/log -type f -size +0 -print -quit)"
  install -d /run/sshd && ssh-keygen -q -t ed25519 -N "" -f /tmp/k
  sshd -T -h /tmp/k | grep -qx "passwordauthentication no"
  sshd -T -h /tmp/k | grep -qx "permitrootlogin no"' || fail "an independent check disagrees with the gate"
log "hardened and verified in $((SECONDS - started_at))s"
