#!/usr/bin/env bash
# Sets everything up, then builds a real image from the bundled offline demo: a generated
# small base image and local content files (nothing is downloaded), and shows what is inside.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

demo=demo
rm -rf "$demo"
.venv/bin/python -m image_creator.demo "$demo"
echo
echo "==> the demo config ($demo/demo.yaml):"
cat "$demo/demo.yaml"
echo
.venv/bin/image-creator --check "$demo/demo.yaml"
echo
.venv/bin/image-creator -X "$demo/demo.yaml" "$demo/offspot-demo.img"

image="$demo/offspot-demo.img"
echo
echo "==> what is inside $image"
sfdisk --list "$image"
boot=$(( $(sfdisk --json "$image" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])') * 512 ))
data=$(( $(sfdisk --json "$image" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][2]["start"])') * 512 ))
echo
echo "--- boot partition (FAT):"
MTOOLS_SKIP_CHECK=1 mdir -i "$image@@$boot" ::/
echo "--- offspot.yaml on the boot partition:"
MTOOLS_SKIP_CHECK=1 mtype -i "$image@@$boot" ::/offspot.yaml
echo "--- data partition (ext4), extracted with debugfs:"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
debugfs -R "rdump / $tree" "$image?offset=$data" 2>/dev/null
(cd "$tree" && find . -path ./lost+found -prune -o -type f -printf '%10s  /data/%P\n' | sort -k2)
echo
echo "--- e2fsck of the data partition:"
e2fsck -fn "$image?offset=$data" 2>&1 | tail -n 1
echo
ls -ls "$image"
echo "(first column: KiB actually used on disk; the image is sparse)"
