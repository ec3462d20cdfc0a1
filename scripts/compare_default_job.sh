#!/bin/bash
# The default job (python -m cljax.main) at another revision and at this checkout, in turn, side by
# side on one machine: round 0 fills each one's own compilation cache, rounds 1..N run warm.
#
#   bash scripts/compare_default_job.sh d9e82e5 3
#   bash scripts/compare_default_job.sh 0700203 3 --config.strategies=naive,cumulative,lwf,ewc,si,cwr,cwr_plus,ar1
#
# Arguments after ROUNDS go to both jobs (e.g. the same strategies when the default job changed).
# Prints one line per job: round, which, wall seconds, and the job's own "compiling took" line.
# The other revision is checked out with `git worktree` under a temporary directory (removed at the end).
set -euo pipefail
base_rev=${1:?usage: compare_default_job.sh REVISION [ROUNDS [CLJAX.MAIN ARGUMENTS...]]}
rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d -t cljax-compare-XXXXXX)
trap 'git -C "$here" worktree remove --force "$scratch/base" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git -C "$here" worktree add --detach -q "$scratch/base" "$base_rev"
for round in $(seq 0 "$rounds"); do
  for which in base this; do
    tree=$here
    [ "$which" = base ] && tree=$scratch/base
    rm -rf "$scratch/work-$which"
    start=$(date +%s.%N)
    # python -m runs the tree's own cljax (the current directory comes first on sys.path).
    (cd "$tree" && CLJAX_CACHE_DIR="$scratch/cache-$which" python3 -m cljax.main --workdir="$scratch/work-$which" "$@" \
      >"$scratch/log-$which" 2>&1)
    end=$(date +%s.%N)
    printf 'round %s %-4s %6.1f s; %s\n' "$round" "$which" "$(python3 -c "print($end - $start)")" \
      "$(grep 'compiling took' "$scratch/log-$which")"
  done
done
