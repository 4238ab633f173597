#!/usr/bin/env bash
# Reports the free disk space and what fedcred's builds keep, and warns when a cold run may not
# fit. It never fails: a run that may still fit is better tried.
#   hack/disk.sh                 report now
#   hack/disk.sh --watch FILE    sample the free space every 5 s into FILE until the caller exits
#   hack/disk.sh --report FILE   the peak written while FILE was being sampled
# A cold run of .ci/run (nothing cached) needs about 7 GB at its peak (BENCHMARKS.md, "CI
# footprint"); FEDCRED_DISK_NEEDED_GB overrides the figure warned about.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

needed_gb="${FEDCRED_DISK_NEEDED_GB:-7}"
mkdir -p "$FEDCRED_CACHE"
free_in() { df -P "-B$1" "$2" | awk -v unit="$1" 'NR == 2 {sub(unit, "", $4); print $4}'; } # UNIT PATH
size_of() { if [[ -e "$1" ]]; then du -sh "$1" 2>/dev/null | cut -f1; else echo 0; fi; }

case "${1:-}" in
  --watch)
    file="${2:?--watch needs a file}"
    caller=$PPID
    start=$(free_in M .) lowest=$start
    while kill -0 "$caller" 2>/dev/null; do
      now=$(free_in M .)
      ((now < lowest)) && lowest=$now
      echo "$start $lowest" >"$file.tmp" && mv "$file.tmp" "$file"
      sleep 5
    done
    exit 0
    ;;
  --report)
    file="${2:?--report needs a file}"
    if read -r start lowest <"$file" 2>/dev/null; then
      log "disk: at most $(((start - lowest) / 1024)).$((((start - lowest) % 1024) * 10 / 1024)) GB written at the peak of this run (free space sampled every 5 s: $((start / 1024)) GB at the start, $((lowest / 1024)) GB at the lowest)"
    fi
    exit 0
    ;;
esac

repo_free=$(free_in G .) cache_free=$(free_in G "$FEDCRED_CACHE")
log "disk: $repo_free GB free for the repository, $cache_free GB for $FEDCRED_CACHE; kept: $(size_of "$FEDCRED_CACHE") in the cache, $(size_of target) in target/"
if ((repo_free < needed_gb || cache_free < needed_gb)); then
  log "warning: a run with nothing cached needs about $needed_gb GB; this one may run out of space (what is cached already is not built again)"
fi
