#!/usr/bin/env bash
# Runs INSIDE the testvm guest (`testvm selftest` starts it with 4 disks): proves the
# snapshot machinery hero-snap needs. Prints PASS/FAIL and the time of each step.
#   vda: LVM classic snapshots (ext4 and xfs)   vdb: LVM thin pool + thin snapshot
#   vdc: zpool, 2 datasets, one atomic snapshot  vdd: btrfs snapshot, xfs reflink
set -uo pipefail

[[ ${TESTVM_GUEST:-} == 1 ]] || { echo "guest-selftest.sh runs inside the testvm guest only" >&2; exit 2; }

FAILED=0
T_ALL=$EPOCHREALTIME

step() {
    local name=$1; shift
    local t0=$EPOCHREALTIME out rc
    out=$( (set -euo pipefail; "$@") 2>&1 ); rc=$?
    local dt; dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    if [[ $rc -eq 0 ]]; then
        printf 'PASS  %-50s %6s s\n' "$name" "$dt"
    else
        printf 'FAIL  %-50s %6s s (exit %d)\n' "$name" "$dt" "$rc"
        printf '%s\n' "$out" | sed 's/^/      | /'
        FAILED=$((FAILED + 1))
    fi
}

expect() {   # expect FILE CONTENT
    local got; got=$(cat "$1")
    [[ $got == "$2" ]] || { echo "$1: expected '$2', got '$got'"; return 1; }
}

guest_kernel() {
    echo "kernel $(uname -r)"
    [[ -b /dev/vda && -b /dev/vdb && -b /dev/vdc && -b /dev/vdd ]]
}

lvm_classic() {
    modprobe dm-snapshot
    pvcreate -q /dev/vda
    vgcreate -q tvg /dev/vda
    # ext4 origin, classic COW snapshot, read-only mount without journal replay.
    lvcreate -q -y -L 256M -n ext tvg
    mkfs.ext4 -q /dev/tvg/ext
    mkdir -p /mnt/ext /mnt/ext-snap
    mount /dev/tvg/ext /mnt/ext
    echo before >/mnt/ext/file
    sync
    lvcreate -q -y -s -L 64M -n ext-snap tvg/ext
    echo after >/mnt/ext/file
    mount -o ro,noload /dev/tvg/ext-snap /mnt/ext-snap
    expect /mnt/ext-snap/file before
    expect /mnt/ext/file after
    # xfs origin: the snapshot has the same UUID and a dirty log.
    lvcreate -q -y -L 320M -n xfs tvg
    mkfs.xfs -q /dev/tvg/xfs
    mkdir -p /mnt/xfs /mnt/xfs-snap
    mount /dev/tvg/xfs /mnt/xfs
    echo before >/mnt/xfs/file
    lvcreate -q -y -s -L 64M -n xfs-snap tvg/xfs
    echo after >/mnt/xfs/file
    mount -o ro,nouuid,norecovery /dev/tvg/xfs-snap /mnt/xfs-snap
    expect /mnt/xfs-snap/file before
    umount /mnt/ext-snap /mnt/xfs-snap
    lvremove -q -y tvg/ext-snap tvg/xfs-snap
}

lvm_thin() {
    modprobe dm-thin-pool
    pvcreate -q /dev/vdb
    vgcreate -q tthin /dev/vdb
    lvcreate -q -y -L 1G -T tthin/pool
    lvcreate -q -y -V 4G -T tthin/pool -n vol
    mkfs.ext4 -q /dev/tthin/vol
    mkdir -p /mnt/thin /mnt/thin-snap
    mount /dev/tthin/vol /mnt/thin
    echo before >/mnt/thin/file
    sync
    lvcreate -q -y -s -n snap tthin/vol          # thin snapshot: no size, activation skip set
    echo after >/mnt/thin/file
    lvchange -q -ay -K tthin/snap
    mount -o ro,noload /dev/tthin/snap /mnt/thin-snap
    expect /mnt/thin-snap/file before
    expect /mnt/thin/file after
    umount /mnt/thin-snap
    lvremove -q -y tthin/snap
}

zfs_atomic() {
    zpool create -f -o cachefile=none -O mountpoint=/tpool tpool /dev/vdc
    zfs create tpool/a
    zfs create tpool/b
    echo before >/tpool/a/file
    echo before >/tpool/b/file
    zfs snapshot tpool/a@t tpool/b@t
    echo after >/tpool/a/file
    local ta tb
    ta=$(zfs get -Hp -o value createtxg tpool/a@t)
    tb=$(zfs get -Hp -o value createtxg tpool/b@t)
    echo "createtxg a@t=$ta b@t=$tb"
    [[ -n $ta && $ta == "$tb" ]]
    expect /tpool/a/.zfs/snapshot/t/file before
    expect /tpool/b/.zfs/snapshot/t/file before
    expect /tpool/a/file after
}

btrfs_and_reflink() {
    mkfs.btrfs -q -f /dev/vdd
    mkdir -p /mnt/btrfs
    mount /dev/vdd /mnt/btrfs
    btrfs -q subvolume create /mnt/btrfs/vol
    echo before >/mnt/btrfs/vol/file
    btrfs -q subvolume snapshot -r /mnt/btrfs/vol /mnt/btrfs/vol-snap
    echo after >/mnt/btrfs/vol/file
    expect /mnt/btrfs/vol-snap/file before
    # xfs reflink copy (FICLONE) on the classic-LVM xfs volume
    cp --reflink=always /mnt/xfs/file /mnt/xfs/file.clone
    expect /mnt/xfs/file.clone after
}

echo "testvm selftest in the guest: $(uname -r), $(nproc) vCPUs, cwd $PWD"
step "guest kernel and 4 virtio disks" guest_kernel
step "LVM classic snapshots (ext4 noload, xfs nouuid)" lvm_classic
step "LVM thin pool + thin snapshot (lvchange -K)" lvm_thin
step "ZFS pool, atomic 2-dataset snapshot, .zfs" zfs_atomic
step "btrfs snapshot, xfs reflink" btrfs_and_reflink
total=$(awk -v a="$T_ALL" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
if [[ $FAILED -eq 0 ]]; then
    echo "selftest: all steps passed in $total s (guest time)"
else
    echo "selftest: $FAILED step(s) FAILED in $total s (guest time)"
    exit 1
fi
