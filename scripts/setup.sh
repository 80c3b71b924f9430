#!/usr/bin/env bash
# Installs everything image-creator needs on a Debian 12 host (run as root):
# the host tools a build uses, the tools the tests use, and a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # a build: partitions, filesystems, loop devices, the FAT boot partition, .xz images
  util-linux mount fdisk parted e2fsprogs dosfstools mtools xz-utils ca-certificates
  # Python
  python3 python3-venv python3-pip
  # the tests: a real OCI registry over TLS, skopeo to push and verify images, archives
  docker-registry skopeo openssl bzip2 zip
  # the download tests and benchmarks: aria2c and curl to compare with
  aria2 curl
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing image-creator and its test tools into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
