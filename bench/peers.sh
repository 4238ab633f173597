# Sourced by bench/exchange.sh and bench/agent.sh: the peers of a benchmark run, moto and
# fedcred-doubles, on free loopback ports, stopped when the script exits (logs kept in the run
# directory when it failed). Needs PY (the test venv's python) and hack/lib.sh's log and die.
#
#   peers_run_dir NAME       a new run directory in run_dir, cleaned up at exit
#   start_moto               moto_url, moto_pid
#   start_doubles BIN        fedcred-doubles BIN on run_dir/doubles.json: doubles_url, doubles_pid

moto_pid="" doubles_pid=""

peers_cleanup() {
  local rc=$?
  for pid in $doubles_pid $moto_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  if ((rc != 0)); then
    log "failed; logs kept in $run_dir"
    tail -n 5 "$run_dir"/*.log >&2 2>/dev/null || true
  else
    rm -rf "$run_dir"
  fi
  exit $rc
}

peers_run_dir() {
  run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-bench-$1.XXXXXX")
  trap peers_cleanup EXIT
  trap 'exit 130' INT TERM
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
answers() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }

start_moto() {
  log "starting moto"
  moto_url="http://127.0.0.1:$(free_port)"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "${moto_url##*:}" >"$run_dir/moto.log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 600); do answers "$moto_url/moto-api/" && break; sleep 0.1; done
  answers "$moto_url/moto-api/" || die "moto did not start (see $run_dir/moto.log)"
}

start_doubles() {
  "$1" --listen 127.0.0.1:0 --config "$run_dir/doubles.json" \
    >"$run_dir/doubles.url" 2>"$run_dir/doubles.log" &
  doubles_pid=$!
  for _ in $(seq 100); do [[ -s "$run_dir/doubles.url" ]] && break; sleep 0.1; done
  doubles_url=$(head -n 1 "$run_dir/doubles.url")
  [[ -n "$doubles_url" ]] || die "fedcred-doubles did not start (see $run_dir/doubles.log)"
}
