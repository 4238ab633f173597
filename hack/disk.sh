#!/usr/bin/env bash
# Reports the free disk space and what fedcred's builds keep, and warns when a cold run may not
# fit. It never fails: a run that may still fit is better tried.
#   hack/disk.sh
# A cold run of .ci/run (nothing cached) needs about 7 GB at its peak (BENCHMARKS.md, "CI
# footprint"); FEDCRED_DISK_NEEDED_GB overrides the figure warned about.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

needed_gb="${FEDCRED_DISK_NEEDED_GB:-7}"
mkdir -p "$FEDCRED_CACHE"
free_gb() { df -P -BG "$1" | awk 'NR == 2 {sub("G", "", $4); print $4}'; }
size_of() { if [[ -e "$1" ]]; then du -sh "$1" 2>/dev/null | cut -f1; else echo 0; fi; }

repo_free=$(free_gb .) cache_free=$(free_gb "$FEDCRED_CACHE")
log "disk: $repo_free GB free for the repository, $cache_free GB for $FEDCRED_CACHE; kept: $(size_of "$FEDCRED_CACHE") in the cache, $(size_of target) in target/"
if ((repo_free < needed_gb || cache_free < needed_gb)); then
  log "warning: a run with nothing cached needs about $needed_gb GB; this one may run out of space (what is cached already is not built again)"
fi
