# hero-snap verbs for the Nushell service dispatcher (the seed's dispatcher.nu):
#
#   service <name> backup --to <archive> [--context C[,C2...]]
#   service <name> restore --from <archive> [--context C] [--as NEW]
#   service backup all --to <archive> [--context C[,C2...]]
#
# Everything after the known flags goes to hero-snap unchanged (e.g. --allow-live,
# --replace, -r RECIPIENT). Settings come from the environment: HERO_SNAP_CONFIG,
# HERO_SNAP_ROOT, HERO_SNAP_STATE_DIR, HERO_SNAP_RECIPIENTS_FILE, HERO_SNAP_IDENTITY,
# and HERO_SNAP_BIN (the hero-snap binary, default `hero-snap`).
# Use: `use scripts/hero_snap.nu *` (or `source` it from dispatcher.nu).

def contexts [context] {
  if $context == null { [] } else { $context | split row "," | each {|c| ["--context" $c] } | flatten }
}

def --wrapped hs [...args] {
  let bin = ($env.HERO_SNAP_BIN? | default "hero-snap")
  ^$bin ...$args
}

export def --wrapped service [
  name: string          # a service, or `backup` for `service backup all`
  verb: string          # backup | restore | all
  --to: string          # archive to write
  --from: string        # archive to read
  --context: string     # one context, or several separated by commas
  --as: string          # restore the context under this name
  ...rest               # passed to hero-snap as they are
] {
  let ctx = (contexts $context)
  if $name == "backup" and $verb == "all" {
    if $to == null { error make {msg: "service backup all needs --to <archive>"} }
    hs backup --to $to ...$ctx ...$rest
  } else if $verb == "backup" {
    if $to == null { error make {msg: $"service ($name) backup needs --to <archive>"} }
    hs backup --service $name --to $to ...$ctx ...$rest
  } else if $verb == "restore" {
    if $from == null { error make {msg: $"service ($name) restore needs --from <archive>"} }
    let rename = if $as == null { [] } else { ["--as" $as] }
    hs restore --service $name --from $from ...$ctx ...$rename ...$rest
  } else {
    error make {msg: $"unknown verb `($verb)`: use `service <name> backup --to A`, `service <name> restore --from A` or `service backup all --to A`"}
  }
}
