#!/usr/bin/env bash
# The bare-machine smoke, run inside the throwaway QEMU guest by scripts/test:
#   scripts/testvm/testvm run -- bash scripts/guest-smoke.sh DIR
# DIR holds what an operator brings to a new VM: the demo's archive (full.hsnap) and its age
# key (key.txt), made by `HERO_SNAP_DEMO_EXPORT=DIR scripts/demo`. The guest starts bare: no
# /var/lib/hero, no hero-snap state. With the hero-snap binary and the demo's inventory it
# restores the whole instance to its real paths, starts the services on the restored data
# and checks the data through them (redis-cli, sqlite3, git), then prints the times.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
hs=$PWD/target/debug/hero-snap
inv=$PWD/fixtures/demo/instance.yaml
contexts=(default geomind threefold incubaid)
services=(hero_db hero_osis hero_collab hero_biz hero_foundry hero_indexer hero_proc)
fail() { echo "FAIL smoke: $*"; exit 1; }
ms() { echo $(( ($(date +%s%N) - t0) / 1000000 )); }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true' EXIT

t0=$(date +%s%N)
[ ! -e /var/lib/hero ] || fail "the guest is not bare: /var/lib/hero exists"
# The operator's one manual step: the secret store the inventory names.
mkdir -p /var/lib/hero/hero_proc/secrets
printf 'HERO_DB_MASTER_KEY\nHERO_PROC_ADMIN_TOKEN\n' > /var/lib/hero/hero_proc/secrets/names

"$hs" preflight --from "$dir/full.hsnap" -i "$dir/key.txt" -c "$inv" >/dev/null || fail "pre-flight refused the bare guest"
"$hs" restore --from "$dir/full.hsnap" -i "$dir/key.txt" -c "$inv" | tail -1
restored_ms=$(ms)
bytes=$(du -sb /var/lib/hero | cut -f1)
files=$(find /var/lib/hero -type f | wc -l)

port=6390
for s in "${services[@]}"; do
  setsid fixtures/demo/service "$s" / "$port" serve "${contexts[@]}" >"/tmp/smoke-$s.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 400); do [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
[ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] || fail "redis-server did not start on the restored data: $(cat /tmp/smoke-hero_db.log)"
for c in "${contexts[@]}"; do
  [ "$(redis-cli -p "$port" exists "ctx:$c:memory:5000")" = 1 ] || fail "hero_db lost the AI memory of context $c"
done
specs=()
for c in "${contexts[@]}"; do
  specs+=("$c" "/var/lib/hero/hero_collab/contexts/$c/collab.db" "/var/lib/hero/hero_foundry/contexts/$c/git/main.git")
  [ "$(sqlite3 "/var/lib/hero/hero_collab/contexts/$c/collab.db" 'pragma integrity_check')" = ok ] || fail "collab.db of $c is damaged"
  git --git-dir="/var/lib/hero/hero_foundry/contexts/$c/git/main.git" fsck --strict --no-progress >/dev/null 2>&1 || fail "git fsck failed on $c"
done
fixtures/demo/writer check "$port" "${specs[@]}" >/dev/null || fail "the restored Redis, SQLite and git disagree"
up_ms=$(ms)
echo "SMOKE restored $files files, $bytes bytes in $restored_ms ms; services up and data checked at $up_ms ms (guest time, QEMU software emulation)"
echo "PASS smoke: bare guest -> working restored instance"
