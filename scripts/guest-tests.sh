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

# HERO_SNAP_GUEST_ONLY=load skips to the tests under load (while working on them).
if [ "${HERO_SNAP_GUEST_ONLY:-}" != load ]; then
  check zfs-pool atomic -s on_zfs_a -s on_zfs_b
  check lvm-classic atomic -s on_classic
  check lvm-thin atomic -s on_thin
  check all per-volume

  # A chain from LVM and ZFS snapshots (inode numbers and ctimes carry over, so unchanged
  # files are recognised by the full fingerprint): a full, then an incremental of a
  # change on each volume, restored from the newest alone and compared.
  mkdir -p "$work/chain"
  "$hs" backup -c "$work/inv.yaml" --state-dir "$work/state" --no-encrypt --to "$work/chain/0.hsnap" >/dev/null
  for d in lvm/classic lvm/thin zfs/a zfs/b; do echo "unchanged $d" > "$root/$d/data/keep"; done
  "$hs" backup -c "$work/inv.yaml" --state-dir "$work/state" --no-encrypt --to "$work/chain/1.hsnap" --since latest >/dev/null
  head -c 200000 /dev/urandom > "$root/lvm/classic/data/blob"
  echo new > "$root/lvm/thin/data/new"
  rm "$root/zfs/a/data/sub/name"
  mv "$root/zfs/b/data/blob" "$root/zfs/b/data/blob-renamed"
  result=$("$hs" backup -c "$work/inv.yaml" --state-dir "$work/state" --no-encrypt --to "$work/chain/2.hsnap" --since latest --json | tail -n 1)
  python3 - "$result" <<'PY' || fail "chain: $result"
import json, sys
r = json.loads(sys.argv[1])["result"]
assert r["manifest"]["level"] == 2, r["manifest"].get("level")
# Unchanged since the last archive: the four `keep` files, three `sub/name`, two blobs.
assert r["inherited"][0] == 9, r["inherited"]
PY
  "$hs" verify --from "$work/chain/2.hsnap" --allow-plaintext >/dev/null || fail "chain: verify"
  "$hs" restore --from "$work/chain/2.hsnap" --allow-plaintext -c "$work/inv.yaml" --root "$work/restore-chain" --state-dir "$work/state" >/dev/null
  for d in lvm/classic lvm/thin zfs/a zfs/b; do
    diff -r "$root/$d/data" "$work/restore-chain$root/$d/data" || fail "chain: $d differs after restore"
  done
  [ -z "$(zfs list -H -t snapshot -o name 2>/dev/null)" ] || fail "chain: ZFS snapshots left"
  [ "$(lvs --noheadings -o lv_name herovg | grep -c hero_snap || true)" = 0 ] || fail "chain: LVM snapshots left"
  pass "chain on LVM and ZFS: 9 unchanged files listed, not archived; restored identical"
fi

# Atomicity under load: two services in two cgroups on two volumes, writing sequence
# numbers in lockstep (scripts/lockstep-writer.py). After a backup during the load and a
# restore, the two logs' last records are equal or A = B + 1: one instant for both.
mkdir -p /sys/fs/cgroup
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
writers=()
stop_writers() { for p in "${writers[@]}"; do kill "$p" 2>/dev/null; done; wait "${writers[@]}" 2>/dev/null || true; writers=(); }
trap 'stop_writers; cleanup' EXIT
last() { tail -n 1 "$1" 2>/dev/null || echo 0; }
under_load() { # name dir-a dir-b
  local name=$1 a=$2 b=$3 cg=/sys/fs/cgroup/hero-snap-guest-$1
  mkdir -p "$root/$a/load-$name" "$root/$b/load-$name" "$cg-a" "$cg-b"
  rm -f "$work/ab" "$work/ba"; mkfifo "$work/ab" "$work/ba"
  /usr/bin/python3 scripts/lockstep-writer.py "$root/$a/load-$name/log" a <"$work/ba" >"$work/ab" & writers+=($!); echo $! > "$cg-a/cgroup.procs"
  /usr/bin/python3 scripts/lockstep-writer.py "$root/$b/load-$name/log" b >"$work/ba" <"$work/ab" & writers+=($!); echo $! > "$cg-b/cgroup.procs"
  for _ in $(seq 600); do [ "$(last "$root/$b/load-$name/log")" -ge 50 ] && break; sleep 0.1; done
  [ "$(last "$root/$b/load-$name/log")" -ge 50 ] || fail "$name: the writers did not start"
  cat > "$work/load-$name.yaml" <<INV
format: 1
instance: guest-load
services:
  svc_a: {version: "1", schema: 1, quiesce: {cgroup: hero-snap-guest-$name-a}, surfaces: [{name: data, path: $root/$a/load-$name, scope: instance, class: source}]}
  svc_b: {version: "1", schema: 1, quiesce: {cgroup: hero-snap-guest-$name-b}, surfaces: [{name: data, path: $root/$b/load-$name, scope: instance, class: source}]}
INV
  "$hs" backup -c "$work/load-$name.yaml" --state-dir "$work/state" --no-encrypt --to "$work/load-$name.hsnap" >/dev/null
  grep -q "frozen 0" "$cg-a/cgroup.events" && grep -q "frozen 0" "$cg-b/cgroup.events" || fail "$name: services left frozen"
  stop_writers
  got=$("$hs" inspect --from "$work/load-$name.hsnap" --allow-plaintext | sed -n 's/^consistency: //p')
  [ "$got" = atomic ] || fail "$name: consistency $got, expected atomic"
  "$hs" restore --from "$work/load-$name.hsnap" --allow-plaintext -c "$work/load-$name.yaml" --root "$work/rl-$name" --state-dir "$work/state" >/dev/null
  local la lb
  la=$(last "$work/rl-$name$root/$a/load-$name/log"); lb=$(last "$work/rl-$name$root/$b/load-$name/log")
  [ "$la" -ge 50 ] && { [ "$la" = "$lb" ] || [ "$la" = $((lb + 1)) ]; } || fail "$name: A at $la, B at $lb: not one instant"
  [ -z "$(zfs list -H -t snapshot -o name 2>/dev/null)" ] || fail "$name: ZFS snapshots left"
  [ "$(lvs --noheadings -o lv_name herovg | grep -c hero_snap || true)" = 0 ] || fail "$name: LVM snapshots left"
  rmdir "$cg-a" "$cg-b"
  pass "$name: atomic under load (A at $la, B at $lb), nothing left behind"
}
under_load lvm lvm/classic lvm/thin
under_load zfs zfs/a zfs/b
under_load lvm-zfs lvm/classic zfs/b

pass "guest tests done"
