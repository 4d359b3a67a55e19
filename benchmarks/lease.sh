#!/usr/bin/env bash
# One GPU lease, one call: the environment probe, the lease preset of the GPU benchmark, and the GPU tests,
# each under `timeout`, everything written under one output folder. Run from anywhere on the lent machine:
#
#     bash benchmarks/lease.sh "$OUT"            # or: OUT=/some/dir bash benchmarks/lease.sh
#
# No network is needed. Python packages the machine lacks travel as wheels in $WHEELS (default .whl in the
# repo root; benchmarks/results/README.md lists them and how to download them) and are installed with
# `pip install --no-index --no-deps --target /tmp/site`, then put on PYTHONPATH. The project's code needs no
# install: the scripts put the repo root on sys.path, and pytest runs from the repo root.
#
# Budget (seconds, each overridable from the environment): probe 20, preset 480 (its deadline 440: no
# configuration starts when its estimate would pass it; the 40 s beyond are for one that runs over its
# estimate), GPU tests 80; with the wheel install (seconds) at most about 590 s, inside one 600 s device
# call. A step that times out keeps what it wrote (the preset saves after every configuration). Files:
# environment.json, probe.log, preset.log, gpu-benchmark-lease-*.json and .md, pytest.log, exit-codes.txt.
set -uo pipefail

out="${1:-${OUT:-}}"
if [[ -z "$out" ]]; then
    echo "usage: bash benchmarks/lease.sh OUTPUT_DIR (or set OUT)" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
mkdir -p "$out"
out="$(cd "$out" && pwd)"

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$repo/.whl}"
PROBE_TIMEOUT_S="${PROBE_TIMEOUT_S:-20}"
PRESET_TIMEOUT_S="${PRESET_TIMEOUT_S:-480}"
DEADLINE_S="${DEADLINE_S:-440}"
PYTEST_TIMEOUT_S="${PYTEST_TIMEOUT_S:-80}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

codes="$out/exit-codes.txt"
: >"$codes"
step() {  # step NAME TIMEOUT LOG COMMAND...: run under timeout, log to the file and to stdout, record the code
    local name="$1" limit="$2" log="$3"
    shift 3
    echo "== $name (timeout ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    local code="${PIPESTATUS[0]}"
    echo "$name $code" >>"$codes"
    echo "== $name exit code $code (124: timed out)"
    return "$code"
}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "== installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "wheel install 1" >>"$codes"; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

step probe "$PROBE_TIMEOUT_S" "$out/probe.log" \
    "$PYTHON" benchmarks/environment_probe.py --json "$out/environment.json"
probe_code=$?
if [[ $probe_code -ne 0 ]]; then
    echo "the probe found a requirement missing (see $out/probe.log); nothing else is run"
    exit "$probe_code"
fi

step preset "$PRESET_TIMEOUT_S" "$out/preset.log" \
    "$PYTHON" benchmarks/gpu_benchmark.py --preset lease --deadline-s "$DEADLINE_S" --out "$out"
preset_code=$?

step pytest "$PYTEST_TIMEOUT_S" "$out/pytest.log" \
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests
pytest_code=$?

cat "$codes"
[[ $preset_code -eq 0 && $pytest_code -eq 0 ]]
