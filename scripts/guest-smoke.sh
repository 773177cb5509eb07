#!/usr/bin/env bash
# The bare-machine smoke, run ON the machine being restored: a bare testvm guest started by
# scripts/bare-smoke (the kit shared with it, or copied over SSH like to a VM), or a real VM
# reached over SSH (HERO_SNAP_SMOKE_SSH). It sits in a kit directory holding only what an
# operator brings to a new VM:
#   hero-snap          the binary             instance.yaml  the inventory
#   key.txt            the archive's age key  service, writer, hero_proc: the demo's stand-ins
#   debs/              optional: a local package cache, installed offline (the test guests
#                      have no mirror; a VM too with HERO_SNAP_SMOKE_DEBS=1). Without it,
#                      apt installs from the machine's own mirror.
#
#   guest-smoke.sh BACKEND [DISK]
#     BACKEND lvm-thin | zfs: /var/lib/hero is made on DISK (default /dev/vda) first;
#             existing: /var/lib/hero is already the instance's (empty) volume, left as is.
#   HERO_SNAP_SMOKE_ARCHIVE  the archive: a file or s3://BUCKET/KEY (AWS_* variables set, or
#                            in s3.env beside this script)
#
# The request's three layers in order, each timed: binaries (packages, hero-snap), config
# (inventory, secrets; pre-flight is refused before they are set), state (the restore onto
# the volume, in place). Then the services start on the restored data and are checked
# through redis-cli, sqlite3, git fsck and the demo's cross-service consistency rule.
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
backend=${1:?usage: guest-smoke.sh lvm-thin|zfs|existing [DISK]}
disk=${2:-/dev/vda}
archive=${HERO_SNAP_SMOKE_ARCHIVE:?HERO_SNAP_SMOKE_ARCHIVE: the archive file or s3:// URL}
# s3:// archives: the store's endpoint and keys, written by scripts/bare-smoke.
if [ -f "$kit/s3.env" ]; then . "$kit/s3.env"; fi
inv=/etc/hero-snap/inventory.yaml
h=/var/lib/hero
port=6390
contexts=(default geomind threefold incubaid)
services=(hero_db hero_osis hero_collab hero_biz hero_foundry hero_indexer hero_proc)
export LVM_SUPPRESS_FD_WARNINGS=1 DEBIAN_FRONTEND=noninteractive

fail() { echo "FAIL smoke ($step): $*"; exit 1; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true' EXIT

t_start=$(date +%s%N) t_last=$t_start step=start
times=()
# Ends the running step (records its ms) and names the next one.
begin() {
  local now; now=$(date +%s%N)
  [ "$step" = start ] || times+=("$step=$(( (now - t_last) / 1000000 ))")
  t_last=$now step=$1
  echo "== $1"
}

begin bare-check
command -v hero-snap >/dev/null && fail "hero-snap is already installed: not a bare machine"
command -v redis-server >/dev/null && [ -d "$kit/debs" ] && fail "redis-server is already installed: not a bare machine"
if [ -d $h ] && [ -n "$(ls -A $h)" ]; then fail "$h is not empty"; fi

begin binaries
# Keep package scripts from starting the distribution's own daemons: the instance's
# services are started from their own config after the restore.
policy=/usr/sbin/policy-rc.d
made_policy=0
[ -e $policy ] || { printf '#!/bin/sh\nexit 101\n' > $policy; chmod 755 $policy; made_policy=1; }
# hero-snap itself links libbtrfsutil (README, Install), and its S3 client will not start
# without the system's CA certificates, even for an http:// endpoint.
pkgs=(libbtrfsutil1 ca-certificates redis-server redis-tools sqlite3 git)
case $backend in lvm-thin) pkgs+=(lvm2 thin-provisioning-tools) ;; zfs) pkgs+=(zfsutils-linux) ;; esac
if [ -d "$kit/debs" ]; then
  # Offline, from the local cache only: --no-download fails rather than reach a mirror.
  cp "$kit"/debs/*.deb /var/cache/apt/archives/
  apt-get install -q -y --no-install-recommends --no-download -o Dpkg::Options::=--force-unsafe-io "${pkgs[@]}" > /tmp/smoke-apt.log 2>&1 \
    || { tail -20 /tmp/smoke-apt.log; fail "apt-get install from the local package cache"; }
  apt-get clean
else
  { apt-get update -q && apt-get install -q -y --no-install-recommends "${pkgs[@]}"; } > /tmp/smoke-apt.log 2>&1 \
    || { tail -20 /tmp/smoke-apt.log; fail "apt-get install ${pkgs[*]}"; }
fi
[ $made_policy = 0 ] || rm -f $policy
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" | grep -q 'ok installed' || fail "package $p is not installed"; done
# README, Install: the binary goes to /usr/local/bin.
install -m 755 "$kit/hero-snap" /usr/local/bin/
install -m 755 "$kit/hero_proc" /usr/local/bin/
hero-snap --version

begin volume
case $backend in
  lvm-thin)
    pvcreate -qq "$disk" && vgcreate -qq hero "$disk" || fail "pvcreate/vgcreate on $disk"
    lvcreate -qq -n pool -l 90%VG --type thin-pool hero || fail "thin pool"
    lvcreate -qq -n data -V "$(( $(blockdev --getsize64 "$disk") / 1048576 * 85 / 100 ))M" --thinpool hero/pool || fail "thin volume"
    mkfs.ext4 -q /dev/hero/data || fail "mkfs.ext4"
    mkdir -p $h && mount /dev/hero/data $h || fail "mount the thin volume at $h"
    ;;
  zfs)
    modprobe zfs || fail "modprobe zfs"
    zpool create -f -m none hero "$disk" || fail "zpool create on $disk"
    zfs create -o mountpoint=$h hero/data || fail "zfs create hero/data"
    ;;
  existing) [ -d $h ] || fail "$h does not exist" ;;
  *) fail "unknown backend $backend" ;;
esac
echo "$h: $(findmnt -n -o SOURCE,FSTYPE --target $h)"

begin config
mkdir -p /etc/hero-snap
install -m 644 "$kit/instance.yaml" $inv
install -m 600 "$kit/key.txt" /etc/hero-snap/identity.txt
mkdir -p $h/hero_proc/secrets
: > $h/hero_proc/secrets/names
if hero-snap preflight --from "$archive" -i /etc/hero-snap/identity.txt -c $inv 2> /tmp/smoke-nosecrets.txt; then
  fail "pre-flight passed before the secrets were set"
fi
grep -m1 'secrets missing' /tmp/smoke-nosecrets.txt || fail "pre-flight refused for another reason: $(cat /tmp/smoke-nosecrets.txt)"
hero_proc secret set HERO_DB_MASTER_KEY "smoke-$RANDOM"
hero_proc secret set HERO_PROC_ADMIN_TOKEN "smoke-$RANDOM"
hero-snap preflight --from "$archive" -i /etc/hero-snap/identity.txt -c $inv > /dev/null || fail "pre-flight refused with the secrets set"

begin state
hero-snap restore --from "$archive" -i /etc/hero-snap/identity.txt -c $inv | tail -1 || fail "hero-snap restore"
bytes=$(du -sb $h | cut -f1)
files=$(find $h -type f | wc -l)

begin services
for s in "${services[@]}"; do
  setsid "$kit/service" "$s" / "$port" serve "${contexts[@]}" > "/tmp/smoke-$s.log" 2>&1 &
  pids+=($!)
done
# A large AOF takes a while to load: wait for LOADING to end, not just for the port.
for _ in $(seq 6000); do [ "$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
[ "$(redis-cli -p $port ping 2>/dev/null)" = PONG ] || fail "redis-server did not start on the restored data: $(tail -5 /tmp/smoke-hero_db.log)"

begin checks
keys=$(redis-cli -p $port dbsize)
for c in "${contexts[@]}"; do
  [ "$(redis-cli -p $port exists "ctx:$c:memory:1")" = 1 ] || fail "hero_db lost the AI memory of context $c"
done
specs=()
for c in "${contexts[@]}"; do
  specs+=("$c" "$h/hero_collab/contexts/$c/collab.db" "$h/hero_foundry/contexts/$c/git/main.git")
  [ "$(sqlite3 "$h/hero_collab/contexts/$c/collab.db" 'pragma integrity_check')" = ok ] || fail "collab.db of $c is damaged"
  git --git-dir="$h/hero_foundry/contexts/$c/git/main.git" fsck --strict --no-progress > /dev/null 2>&1 || fail "git fsck failed on $c"
done
"$kit/writer" check $port "${specs[@]}" > /dev/null || fail "the restored Redis, SQLite and git disagree"
begin done

total=$(( ($(date +%s%N) - t_start) / 1000000 ))
gib=$(awk -v b="$bytes" 'BEGIN { printf "%.3f", b / 1073741824 }')
echo "SMOKE backend=$backend restored $files files, $bytes bytes ($gib GiB); hero_db $keys keys"
# Per GiB only where it means something: below a quarter GiB the fixed costs dominate.
for t in "${times[@]}"; do
  awk -v n="${t%%=*}" -v ms="${t#*=}" -v g="$gib" 'BEGIN {
    printf "SMOKE step %-10s %8d ms", n, ms; if (g >= 0.25) printf "  %8.0f ms/GiB", ms / g; printf "\n" }'
done
echo "SMOKE total $total ms (in the machine, from the script's start)"
echo "PASS smoke: bare machine ($backend) -> working restored instance"
