# Shared by the scripts in this folder. Sourced, not run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HYPEMAN_TS_CACHE=${HYPEMAN_TS_CACHE:-/var/cache/hypeman-ts}
log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A stamp file records the hash of a step's inputs, so a step reruns only when they change.
stamp_ok() { [ -f "$HYPEMAN_TS_CACHE/stamps/$1" ] && [ "$(cat "$HYPEMAN_TS_CACHE/stamps/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$HYPEMAN_TS_CACHE/stamps"; printf '%s' "$2" > "$HYPEMAN_TS_CACHE/stamps/$1"; }
hash_files() { cat "$@" | sha256sum | cut -c1-32; }
