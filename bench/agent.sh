#!/usr/bin/env bash
# `fedcred agent` benchmarks (BENCHMARKS.md, "`fedcred agent`"), in one command:
#   1. builds fedcred, fedcred-doubles, the exchange bench (for its `setup`) and the load
#      generator (bench/agent_load.rs) in release mode;
#   2. starts moto (AWS STS) and a fedcred-doubles process (Google STS + IAM Credentials) that
#      caps impersonated tokens at 2 s, so an agent refreshes about once a second;
#   3. runs bench/agent_side_by_side.py: interleaved rounds of the agent and of the Python
#      google-auth baseline with a custom AWS credential supplier
#      (bench/google_auth_supplier.py), load on the agent's token endpoint, and one agent kept
#      running for BENCH_LONG refreshes (about that many seconds);
#   4. prints the tables (also saved under target/bench/) and stops everything it started.
#
#   bench/agent.sh            full run (about 20 minutes: the 1,000-refresh agent sets the pace)
#   bench/agent.sh --quick    smoke run: 1 round, few refreshes, a 20-refresh long run
#   BENCH_ROUNDS=5 BENCH_REFRESHES=60 BENCH_PYTHON_REFRESHES=200 BENCH_LONG=1000 bench/agent.sh
#   BENCH_AGENT=fedcred bench/agent.sh   the agent as `fedcred agent` (default: fedcred-agent)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../hack/lib.sh"
cd "$here/.."

# The agent measured: `fedcred-agent` (the agent alone, what hosts run) or `fedcred` (run as
# `fedcred agent`, the in-pod sidecar from the image).
agent_bin="${BENCH_AGENT:-fedcred-agent}"
[[ "$agent_bin" == fedcred-agent || "$agent_bin" == fedcred ]] || die "BENCH_AGENT is fedcred-agent or fedcred, not $agent_bin"
rounds="${BENCH_ROUNDS:-5}" refreshes="${BENCH_REFRESHES:-60}"
python_refreshes="${BENCH_PYTHON_REFRESHES:-200}" long="${BENCH_LONG:-1000}"
if [[ "${1:-}" == "--quick" ]]; then
  rounds=1 refreshes=5 python_refreshes=20 long=20
elif [[ $# -gt 0 ]]; then
  die "usage: bench/agent.sh [--quick]"
fi

"$here/../hack/install-tools.sh"
VENV="$FEDCRED_CACHE/venv"
PY="$VENV/bin/python"

log "building fedcred, fedcred-doubles and the benches (release; the first build takes a while)"
cargo build --release --locked -p fedcred --bin fedcred --bin fedcred-agent -p fedcred-doubles --bin fedcred-doubles
target="${CARGO_TARGET_DIR:-$PWD/target}"
bench_bin() {
  cargo bench --locked --bench "$1" --no-run --message-format=json-render-diagnostics |
    "$PY" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])
' "$1"
}
exchange_bin=$(bench_bin exchange)
load_bin=$(bench_bin agent_load)
[[ -x "$exchange_bin" && -x "$load_bin" ]] || die "could not find the bench binaries"

source "$here/peers.sh"
peers_run_dir agent

start_moto

log "starting fedcred-doubles (impersonated tokens capped at 2 s)"
"$exchange_bin" setup --moto "$moto_url" --out "$run_dir"
"$PY" - "$run_dir/doubles.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["impersonated_lifetime_cap_seconds"] = 2
json.dump(config, open(sys.argv[1], "w"))
PY
start_doubles "$target/release/fedcred-doubles"

# BENCH_AGENT_PATH: measure another build of it instead, e.g. the static one
# hack/build-image-binary.sh makes (target/image/x86_64-unknown-linux-gnu/release/$agent_bin).
agent_path="${BENCH_AGENT_PATH:-$target/release/$agent_bin}"
[[ -x "$agent_path" && "$(basename "$agent_path")" == "$agent_bin" ]] || die "$agent_path is not an executable $agent_bin"
mkdir -p target/bench
results="target/bench/agent-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "## fedcred agent benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- $(rustc --version), Python $("$PY" -c 'import platform; print(platform.python_version())'), google-auth $("$PY" -c 'import google.auth; print(google.auth.__version__)'), requests $("$PY" -c 'import requests; print(requests.__version__)')"
  echo "- agent: $agent_path ($(stat -c %s "$agent_path") bytes)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} | tee "$results"

"$PY" "$here/agent_side_by_side.py" --fedcred "$agent_path" --load "$load_bin" \
  --python "$PY" --baseline "$here/google_auth_supplier.py" --setup "$run_dir/setup.json" \
  --doubles "$doubles_url" --moto "$moto_url" --rounds "$rounds" --refreshes "$refreshes" \
  --python-refreshes "$python_refreshes" --long "$long" --out "${results%.md}.json" | tee -a "$results"

log "done; results in $results (raw measurements in ${results%.md}.json)"
