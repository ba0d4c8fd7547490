#!/usr/bin/env bash
# Gate: fail unless the image passes what marketplace scanners check. Packer runs it right after
# 80-harden.sh; images/packer/test-hardening.sh runs both in a container. Prints every problem found.
set -uo pipefail
problems=0
problem() { echo "NOT HARDENED: $*" >&2; problems=$((problems + 1)); }

while IFS= read -r home; do
  for f in "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"; do
    [[ -e "$f" ]] && problem "$f exists"
  done
  for f in "$home/.bash_history" "$home/.python_history"; do
    [[ -s "$f" ]] && problem "$f holds shell history"
  done
done < <(getent passwd | cut -d: -f6 | sort -u | grep -v '^/$')

while IFS=: read -r user hash _; do
  case "$hash" in
    '!'* | '*'*) ;;
    '') problem "account $user has an empty password" ;;
    *) problem "account $user has a usable password" ;;
  esac
done < /etc/shadow
[[ "$(passwd --status root | cut -d' ' -f2)" == L ]] || problem "root's password is not locked"

# sshd -T prints the effective configuration; it needs a host key, and the image has none on purpose.
scratch="$(mktemp -d)"
install -d -m 0755 /run/sshd # sshd -T insists on its privilege separation directory
ssh-keygen -q -t ed25519 -N '' -f "$scratch/key"
effective="$(/usr/sbin/sshd -T -f /etc/ssh/sshd_config -h "$scratch/key" 2>&1)" || problem "sshd -T failed: $effective"
rm -rf "$scratch"
for want in "passwordauthentication no" "permitrootlogin no" "kbdinteractiveauthentication no" \
            "permitemptypasswords no" "pubkeyauthentication yes"; do
  grep -qx "$want" <<<"$effective" || problem "sshd: expected '$want'"
done
compgen -G '/etc/ssh/ssh_host_*key' >/dev/null && problem "SSH host keys from the build are still there"

[[ -s /etc/machine-id ]] && problem "/etc/machine-id is not empty"
[[ -e /var/lib/cloud/instance ]] && problem "cloud-init state from the build remains (/var/lib/cloud/instance)"
compgen -G '/var/lib/cloud/instances/*' >/dev/null && problem "cloud-init instance data remains"
[[ -n "$(find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' \) -print -quit)" ]] && problem "rotated logs remain"

if ((problems > 0)); then
  echo "$problems hardening problem(s)" >&2
  exit 1
fi
echo "hardening verified: no keys, no passwords, key-only SSH without root, fresh identity, no logs"
