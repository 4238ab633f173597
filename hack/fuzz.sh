#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the first crash.
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Installs cargo-fuzz into the cache when missing and uses the nightly toolchain (libFuzzer
# needs its sanitizer flags). Corpora grow in the cache, not in the repository; the small seed
# inputs in fuzz/seeds/ start each run. A crash leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

seconds="${1:-20}"
shift || true
[[ "$seconds" =~ ^[0-9]+$ ]] || die "SECONDS_PER_TARGET must be a whole number, not $seconds"

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
fuzz_root="$FEDCRED_CACHE/cargo-fuzz"
cargo_fuzz="$fuzz_root/bin/cargo-fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain (libFuzzer needs it)"
  rustup toolchain install nightly --profile minimal
fi
if [[ ! -x "$cargo_fuzz" ]] || ! "$cargo_fuzz" --version | grep -qF "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $fuzz_root"
  cargo install --locked --root "$fuzz_root" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
export PATH="$fuzz_root/bin:$PATH"

if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
((${#targets[@]} > 0)) || die "no fuzz targets found"

# Builds live in the cache, so a fresh clone (as CI has) reuses them. No AddressSanitizer:
# fedcred forbids unsafe code and the C in its dependencies (aws-lc) is not built with the
# sanitizer anyway; without it the targets build in half the time and a third of the space,
# and run faster. FUZZ_SANITIZER=address brings it back.
target_dir="$FEDCRED_CACHE/fuzz-target"
sanitizer="${FUZZ_SANITIZER:-none}"
log "building the fuzz targets (nightly, release, sanitizer: $sanitizer)"
cargo +nightly fuzz build -O --sanitizer "$sanitizer" --target-dir "$target_dir"

corpus_root="$FEDCRED_CACHE/fuzz-corpus"
for target in "${targets[@]}"; do
  corpus="$corpus_root/$target"
  mkdir -p "$corpus"
  seeds=()
  [[ -d fuzz/seeds/$target ]] && seeds=("fuzz/seeds/$target")
  log "fuzzing $target for ${seconds}s (corpus $corpus)"
  out="$(mktemp)"
  if ! cargo +nightly fuzz run -O --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$out" 2>&1; then
    # The assertion that failed comes first; the tail holds libFuzzer's report and the input.
    grep -m1 -A4 "panicked at" "$out" >&2 || true
    tail -n 40 "$out" >&2
    rm -f "$out"
    die "fuzz target $target crashed; the input is in fuzz/artifacts/$target/"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
  log "$target: ${runs:-?} executions in ${seconds}s, no crash"
  rm -f "$out"
done
log "all ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
