#!/usr/bin/env bash
# Installs what `ksmlab replay --kernel 6.1|6.12` needs (Debian packages) and pre-fetches the
# two kernel packages and the guest's base initramfs into the cache ($KSMLAB_CACHE, else
# ~/.cache/ksmlab). Idempotent: a second run installs and downloads nothing.
# Run it from .ci/run as `bash .ci/qemu-setup.sh` (from any directory); exit status non-zero
# when something cannot be installed or fetched.
set -euo pipefail
_ksmlab_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ksmlab_pkgs=(qemu-system-x86 busybox-static cpio python3.11)
_ksmlab_missing=()
for p in "${_ksmlab_pkgs[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
    || _ksmlab_missing+=("$p")
done
_ksmlab_sudo=()
[ "$(id -u)" = 0 ] || _ksmlab_sudo=(sudo)
_ksmlab_updated=0
if [ ${#_ksmlab_missing[@]} -gt 0 ]; then
  "${_ksmlab_sudo[@]}" apt-get update -q >/dev/null
  _ksmlab_updated=1
  DEBIAN_FRONTEND=noninteractive "${_ksmlab_sudo[@]}" apt-get install -y -q \
    --no-install-recommends "${_ksmlab_missing[@]}" >/dev/null
fi
# The kernels: fetched by package name with `apt-get download` (needs fresh package lists
# when the .deb is not cached yet) and unpacked into the cache.
if ! (cd "$_ksmlab_root" && /usr/bin/python3.11 -m app.kernel.qemu fetch 6.1 6.12 --offline \
      >/dev/null 2>&1); then
  [ "$_ksmlab_updated" = 1 ] || "${_ksmlab_sudo[@]}" apt-get update -q >/dev/null
  (cd "$_ksmlab_root" && /usr/bin/python3.11 -m app.kernel.qemu fetch 6.1 6.12)
fi
