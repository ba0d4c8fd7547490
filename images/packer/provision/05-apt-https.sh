#!/usr/bin/env bash
# Every apt source over https://. A marketplace node may leave only to TCP/443 (the launch templates' egress
# rules), so a source on http:// (the clouds' own Ubuntu mirrors, such as http://us-east-1.ec2.archive.ubuntu.com)
# never answers it, and unattended-upgrades would fail quietly for the node's whole life. This rewrites each
# source to https:// (UBUNTU_MIRROR, when set, replaces Canonical's archive and security hosts), then fails the
# build unless `apt-get update` fetches every index that way: whether a mirror serves https is proven here,
# where the builder can still reach it, not assumed. 98-foresight-apt.cfg then keeps cloud-init from writing
# the cloud's http:// mirror back into sources.list on each instance's first boot.
#
# env: UBUNTU_MIRROR      an https:// Ubuntu archive mirror for both archive and security updates
#                         (e.g. https://mirrors.edge.kernel.org/ubuntu/); empty: the hosts the base names
#      FORESIGHT_FILES    where the uploaded snippets are (default /tmp/foresight-files)
#      FORESIGHT_APT_DIR, FORESIGHT_CLOUD_CFG_DIR  /etc/apt and /etc/cloud/cloud.cfg.d; tests point them elsewhere
set -euo pipefail
files="${FORESIGHT_FILES:-/tmp/foresight-files}"
apt_dir="${FORESIGHT_APT_DIR:-/etc/apt}"
cloud_cfg_dir="${FORESIGHT_CLOUD_CFG_DIR:-/etc/cloud/cloud.cfg.d}"
mirror="${UBUNTU_MIRROR:-}"

fail() {
  echo "apt-https: $*" >&2
  exit 1
}

if [[ -n "$mirror" && "$mirror" != https://* ]]; then
  fail "UBUNTU_MIRROR=$mirror is not an https:// URL"
fi
shopt -s nullglob
sources=()
for file in "$apt_dir/sources.list" "$apt_dir"/sources.list.d/*.list "$apt_dir"/sources.list.d/*.sources; do
  [[ -f "$file" ]] && sources+=("$file")
done
if ((${#sources[@]} == 0)); then
  fail "no apt sources under $apt_dir"
fi
# Only where apt reads a URI: one-line entries (`deb [options] URI ...`) and deb822 `URIs:` fields.
one_line='^([[:space:]]*deb(-src)?[[:space:]]+(\[[^]]*\][[:space:]]+)?)'
for file in "${sources[@]}"; do
  if [[ -n "$mirror" ]]; then
    ubuntu='https?://([a-z0-9-]+\.)*(archive|security)\.ubuntu\.com/ubuntu/?'
    sed -E -i -e "s#${one_line}${ubuntu}#\\1${mirror%/}/#" -e "/^[[:space:]]*URIs:/ s#${ubuntu}#${mirror%/}/#g" "$file"
  fi
  sed -E -i -e "s#${one_line}http://#\\1https://#" -e '/^[[:space:]]*URIs:/ s#http://#https://#g' "$file"
done
if left=$(grep -HnE "(${one_line}|^[[:space:]]*URIs:.*)http://" "${sources[@]}"); then
  fail "sources still on http://: $left"
fi

if ! update=$(apt-get update 2>&1); then
  fail "apt-get update failed over https: $update"
fi
echo "$update"
if grep -qE '^(Err:|[WE]: (Failed to fetch|Some index files failed))' <<<"$update"; then
  fail "a source does not serve https (see above); set UBUNTU_MIRROR (packer: ubuntu_mirror) to one that does"
fi

install -d -m 0755 "$cloud_cfg_dir"
install -m 0644 "$files/98-foresight-apt.cfg" "$cloud_cfg_dir/98-foresight-apt.cfg"
echo "apt-https: every apt source is on https:// (${#sources[@]} files)"
