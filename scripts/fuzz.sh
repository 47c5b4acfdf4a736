#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 600) each, two at a time,
# with corpora seeded from ../shared/vectors. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags it needs. A crash leaves its input in
# fuzz/artifacts/TARGET/ and makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
vectors=${SOCP_VECTORS:-../shared/vectors}
export RUSTC_BOOTSTRAP=1

seed() {
    local dir=fuzz/corpus/$1
    mkdir -p "$dir"
    shift
    "$@" "$dir"
}
frames() {
    python3 - "$vectors/reference-run/frames.jsonl" "$1" <<'PY'
import json, sys, hashlib, os
for line in open(sys.argv[1]):
    frame = json.loads(line)["frame"].encode()
    open(os.path.join(sys.argv[2], hashlib.sha1(frame).hexdigest()), "wb").write(frame)
PY
}
canon() {
    python3 - "$vectors/canonical.json" "$1" <<'PY'
import json, sys, hashlib, os
for case in json.load(open(sys.argv[1])):
    data = case["input"].encode()
    open(os.path.join(sys.argv[2], hashlib.sha1(data).hexdigest()), "wb").write(data)
PY
}
names() {
    for n in '../../x' '/etc/passwd' 'a/../../b' $'bell\x07.txt' 'report.pdf' '.hidden' '..'; do
        printf '%s' "$n" > "$1/$(printf '%s' "$n" | sha1sum | cut -c1-16)"
    done
}
keys() {
    python3 - "$vectors/pubkeys.json" "$1" <<'PY'
import json, sys, os
for name, case in json.load(open(sys.argv[1])).items():
    open(os.path.join(sys.argv[2], name), "w").write(case["pubkey"])
PY
}
seed envelope frames
seed dispatch frames
seed canonical canon
seed b64 keys
seed file_name names

cargo fuzz build -O
run() {
    cargo fuzz run -O "$1" "fuzz/corpus/$1" -- -max_total_time="$seconds" -rss_limit_mb=4096 2>&1 | tail -5
}
failed=0
for pair in "envelope dispatch" "canonical b64" "file_name"; do
    pids=()
    for target in $pair; do
        run "$target" > "/tmp/socp-fuzz-$target.log" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    for target in $pair; do
        echo "== $target"; cat "/tmp/socp-fuzz-$target.log"
    done
done
exit $failed
