#!/usr/bin/env bash
# Marketplace hardening, the last step before the disk is captured. The AWS, Google Cloud and Azure
# scanners reject an image that carries SSH keys, passwords, password or root SSH logins, a machine
# identity, cloud-init state, or logs and shell history from its build. This removes all of them;
# 90-verify-hardening.sh runs next as the gate.
#
# env: FORESIGHT_FILES  where the uploaded snippets are (default /tmp/foresight-files)
set -euo pipefail
files="${FORESIGHT_FILES:-/tmp/foresight-files}"
step() { echo "harden: $*"; }

home_dirs() { getent passwd | cut -d: -f6 | sort -u | grep -v '^/$' || true; }

step "SSH: keys only, no root login"
install -d -m 0755 /etc/ssh/sshd_config.d
install -m 0644 "$files/00-foresight-hardening.conf" /etc/ssh/sshd_config.d/00-foresight-hardening.conf
if ! grep -qE '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config; then
  sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' /etc/ssh/sshd_config
fi
# Every instance must get its own host keys: drop the build's, and have sshd make new ones if nothing
# else (cloud-init, the guest agents) did by the time it starts.
rm -f /etc/ssh/ssh_host_*key /etc/ssh/ssh_host_*key.pub
install -d -m 0755 /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/10-foresight-host-keys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT

step "no authorized_keys anywhere"
while IFS= read -r home; do
  rm -f "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"
done < <(home_dirs)

step "no passwords: every account locked, root included"
while IFS=: read -r user hash _; do
  case "$hash" in
    '!'* | '*'*) ;;
    *) usermod --lock "$user" ;;
  esac
done < /etc/shadow
passwd --lock root >/dev/null

step "cloud-init and machine identity reset for first boot"
if command -v cloud-init >/dev/null; then
  cloud-init clean --logs --seed
fi
rm -rf /var/lib/cloud/instance /var/lib/cloud/instances/* /var/lib/cloud/data/*
truncate -s 0 /etc/machine-id
if [[ -d /var/lib/dbus ]]; then
  ln -sf /etc/machine-id /var/lib/dbus/machine-id
fi
rm -f /var/lib/systemd/random-seed

step "logs, shell history, temporary files and package caches cleared"
if command -v apt-get >/dev/null; then
  apt-get clean
fi
if [[ -d /run/systemd/system ]]; then
  journalctl --rotate >/dev/null 2>&1 || true
  journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' -o -name '*.journal' -o -name '*.journal~' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
while IFS= read -r home; do
  rm -f "$home"/.bash_history "$home"/.python_history "$home"/.lesshst "$home"/.viminfo "$home"/.wget-hsts
done < <(home_dirs)
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* /var/tmp/.[!.]* 2>/dev/null || true
unset HISTFILE
