#!/usr/bin/env bash
# Runs inside the throwaway QEMU guest (scripts/testvm/testvm run --disks 2 -- ...):
# hero-snap backups from real LVM (classic and thin) and ZFS volumes, restored and compared,
# with no snapshot, mount or LV left behind. Needs target/debug/hero-snap built.
set -euo pipefail
cd "$(dirname "$0")/.."
hs=$PWD/target/debug/hero-snap
work=$(mktemp -d /tmp/guest.XXXXXX)
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; exit 1; }
export LVM_SUPPRESS_FD_WARNINGS=1
cleanup() {
  set +e
  umount "$work"/mnt/* 2>/dev/null
  zpool destroy -f herotest 2>/dev/null
  vgremove -ff -y herovg >/dev/null 2>&1
}
trap cleanup EXIT

# LVM on vda: a classic LV with XFS, and a thin LV with ext4.
pvcreate -qq /dev/vda
vgcreate -qq herovg /dev/vda
lvcreate -qq -n classic -L 300M herovg
lvcreate -qq -n pool -L 400M --type thin-pool herovg
lvcreate -qq -n thin -V 300M --thinpool herovg/pool
mkfs.xfs -q /dev/herovg/classic
mkfs.ext4 -q /dev/herovg/thin
# ZFS on vdb: one pool, two datasets.
modprobe zfs
zpool create -f -m none herotest /dev/vdb
zfs create herotest/a
zfs create herotest/b

root=$work/root
mkdir -p "$root/lvm/classic" "$root/lvm/thin" "$work/mnt"
mount /dev/herovg/classic "$root/lvm/classic"
mount /dev/herovg/thin "$root/lvm/thin"
zfs set mountpoint="$root/zfs/a" herotest/a
zfs set mountpoint="$root/zfs/b" herotest/b
for d in lvm/classic lvm/thin zfs/a zfs/b; do
  mkdir -p "$root/$d/data/sub"
  head -c 300000 /dev/urandom > "$root/$d/data/blob"
  echo "$d" > "$root/$d/data/sub/name"
done

cat > "$work/inv.yaml" <<INV
format: 1
instance: guest
services:
  on_classic: {version: "1", schema: 1, surfaces: [{name: data, path: $root/lvm/classic/data, scope: instance, class: source}]}
  on_thin:    {version: "1", schema: 1, surfaces: [{name: data, path: $root/lvm/thin/data, scope: instance, class: source}]}
  on_zfs_a:   {version: "1", schema: 1, surfaces: [{name: data, path: $root/zfs/a/data, scope: instance, class: source}]}
  on_zfs_b:   {version: "1", schema: 1, surfaces: [{name: data, path: $root/zfs/b/data, scope: instance, class: source}]}
INV

plan=$("$hs" plan -c "$work/inv.yaml" --state-dir "$work/state" --json)
for b in lvm zfs; do grep -q "\"backend\":\"$b\"" <<<"$plan" || fail "plan has no $b volume: $plan"; done
pass "plan detects LVM and ZFS volumes"

check() { # name expected-consistency [--service S]...
  local name=$1 want=$2; shift 2
  "$hs" backup -c "$work/inv.yaml" "$@" --state-dir "$work/state" --no-encrypt --to "$work/$name.hsnap" >/dev/null
  got=$("$hs" inspect --from "$work/$name.hsnap" --allow-plaintext | sed -n 's/^consistency: //p')
  [ "$got" = "$want" ] || fail "$name: consistency $got, expected $want"
  "$hs" restore --from "$work/$name.hsnap" --allow-plaintext -c "$work/inv.yaml" --root "$work/restore-$name" --state-dir "$work/state" >/dev/null
  for svc in $("$hs" inspect --from "$work/$name.hsnap" --allow-plaintext --json | python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)["result"]["services"]))'); do
    case $svc in on_classic) d=lvm/classic;; on_thin) d=lvm/thin;; on_zfs_a) d=zfs/a;; on_zfs_b) d=zfs/b;; esac
    diff -r "$root/$d/data" "$work/restore-$name$root/$d/data" || fail "$name: $svc differs after restore"
  done
  [ -z "$(zfs list -H -t snapshot -o name 2>/dev/null)" ] || fail "$name: ZFS snapshots left: $(zfs list -H -t snapshot -o name)"
  [ "$(lvs --noheadings -o lv_name herovg | grep -c hero_snap || true)" = 0 ] || fail "$name: LVM snapshots left"
  ! grep -q "$work/state/mnt" /proc/mounts || fail "$name: snapshot mounts left"
  pass "$name: backup ($want) + restore identical, nothing left behind"
}

check zfs-pool atomic -s on_zfs_a -s on_zfs_b
check lvm-classic atomic -s on_classic
check lvm-thin atomic -s on_thin
check all per-volume

pass "guest tests done"
