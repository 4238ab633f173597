#!/usr/bin/env bash
# Exchange engine benchmarks (BENCHMARKS.md, "Exchange engine"), in one command:
#   1. builds the bench and the fedcred-doubles binary in release mode;
#   2. starts moto (AWS STS) and a fedcred-doubles process (Google STS + IAM Credentials);
#   3. runs the in-process benchmarks (subject token cost, exchanges/s, cache hits);
#   4. runs fedcred and Python google-auth side by side against that doubles process, each client
#      as its own process, and compares CPU time and peak RSS per exchange;
#   5. prints the tables (also saved under target/bench/) and stops moto and the doubles.
#
#   bench/exchange.sh                 full run (a few minutes on 2 cores)
#   bench/exchange.sh --quick         smoke run with few iterations
#   BENCH_ITERATIONS=500 BENCH_ROUNDS=5 bench/exchange.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../hack/lib.sh"
cd "$here/.."

quick=""
iterations="${BENCH_ITERATIONS:-500}"
rounds="${BENCH_ROUNDS:-5}"
if [[ "${1:-}" == "--quick" ]]; then
  quick="--quick" iterations=30 rounds=1
elif [[ $# -gt 0 ]]; then
  die "usage: bench/exchange.sh [--quick]"
fi

"$here/../hack/install-tools.sh"
VENV="$FEDCRED_CACHE/venv"
PY="$VENV/bin/python"
export FEDCRED_TEST_VENV="$VENV"

log "building the exchange bench and fedcred-doubles (release; the first build takes a while)"
cargo build --release --locked -p fedcred-doubles --bin fedcred-doubles
bench_bin=$(cargo bench --locked --bench exchange --no-run --message-format=json-render-diagnostics |
  "$PY" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "exchange" and m.get("executable"):
        print(m["executable"])
')
[[ -x "$bench_bin" ]] || die "could not find the exchange bench binary"
doubles_bin="${CARGO_TARGET_DIR:-$PWD/target}/release/fedcred-doubles"

source "$here/peers.sh"
peers_run_dir exchange

start_moto

log "starting fedcred-doubles"
"$bench_bin" setup --moto "$moto_url" --out "$run_dir"
start_doubles "$doubles_bin"

mkdir -p target/bench
results="target/bench/exchange-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "## Exchange engine benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- $(rustc --version), Python $("$PY" -c 'import platform; print(platform.python_version())'), google-auth $("$PY" -c 'import google.auth; print(google.auth.__version__)'), requests $("$PY" -c 'import requests; print(requests.__version__)'), moto $("$PY" -c 'import moto; print(moto.__version__)')"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg); other processes using CPU (share of one core over 2 s): $(
    PYTHONDONTWRITEBYTECODE=1 "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from side_by_side import busy_processes; print(busy_processes())' "$here")"
} | tee "$results"

log "in-process benchmarks"
# The in-process doubles log one line per exchange on stderr; leave those out.
"$bench_bin" inprocess --moto "$moto_url" ${quick:+"$quick"} 2> >(grep --line-buffered -v '^\[doubles\]' >&2) |
  tee -a "$results"

log "side by side: fedcred and google-auth against fedcred-doubles at $doubles_url"
"$PY" "$here/side_by_side.py" --bench-bin "$bench_bin" --setup "$run_dir/setup.json" \
  --doubles "$doubles_url" --moto "$moto_url" --peer-pids "$moto_pid,$doubles_pid" \
  --iterations "$iterations" --rounds "$rounds" --out "${results%.md}.json" | tee -a "$results"

log "done; results in $results (raw side-by-side measurements in ${results%.md}.json)"
