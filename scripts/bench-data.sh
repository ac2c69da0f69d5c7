#!/usr/bin/env bash
# Documents/s per core, kiln vs datatrove, same inputs, same run (interleaved under the shared
# bench lock), plus agreement and extraction F1 vs trafilatura. Needs `pip install datatrove
# trafilatura` (+ the extras datatrove asks for: pyahocorasick fasteners tldextract warcio
# faust-cchardet python-magic spacy lxml_html_clean) and `kiln data fetch` (add `--set full` for
# linux-doc).
# Usage: scripts/bench-data.sh [OUT]   (default OUT=runs/bench-data)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench-data}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/release-bench-data}
cargo build --release -q -p kiln --examples -p kiln-data
KILN=$CARGO_TARGET_DIR/release/kiln
DATA=${KILN_DATA_DIR:-data}
INPUTS=("$DATA/raw/pywb/pywb-2.10.0/sample_archive/warcs/iana.warc.gz" "$DATA/raw/python-doc/usr/share/doc/python3.11/html")
rm -rf "$OUT" && mkdir -p "$OUT"
# Same stages as the datatrove side (no fastText offline → no language filter; datatrove's MinHash
# is a separate 4-launch pipeline and is left out of the timing on both sides).
printf '[language]\nenabled = false\n[minhash]\nenabled = false\n' > "$OUT/same-stages.toml"
cpu() { /usr/bin/time -f "%U %S %e" -o "$1" "${@:2}"; }
flock /tmp/kiln-bench.lock bash -c "
  $(declare -f cpu)
  cpu '$OUT/kiln-same.time' '$KILN' data process --threads 1 --config '$OUT/same-stages.toml' --input ${INPUTS[*]} --out '$OUT/kiln-same' > '$OUT/kiln-same.log'
  python3 scripts/bench-data-datatrove.py '$OUT/datatrove' ${INPUTS[*]} > '$OUT/datatrove.log' 2>'$OUT/datatrove.err'
  cpu '$OUT/kiln-full.time' '$KILN' data process --threads 1 --input ${INPUTS[*]} --out '$OUT/kiln-full' > '$OUT/kiln-full.log'
"
DOCS=$(python3 -c "import json;print(json.load(open('$OUT/kiln-same/stats.json'))['stages'][0]['docs_in'])")
DT=$(tail -1 "$OUT/datatrove.log")
python3 - "$OUT" "$DOCS" "$DT" <<'PY'
import json, sys
out, docs, dt = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
def cpu(name):
    u, s, e = map(float, open(f"{out}/{name}.time").read().split()[-3:])
    return u + s, e
ks, kf = cpu("kiln-same"), cpu("kiln-full")
# datatrove's reader already skips non-HTML WARC records; per-core rates use each side's own
# input count (kiln counts every response record it reads).
rows = [("kiln (same stages)", docs, ks[0], ks[1]), ("kiln (full: + language + MinHash)", docs, kf[0], kf[1]),
        ("datatrove + trafilatura", dt["docs"], dt["cpu_s"], dt["wall_s"])]
for name, n, c, w in rows:
    print(f"{name:<36} {n:>6} docs  {c:8.2f} CPU s  {w:8.2f} wall s  {n / c:9.1f} docs/s per core")
print(f"kiln/datatrove per core: same stages {(docs / ks[0]) / (dt['docs'] / dt['cpu_s']):.1f}x, "
      f"full pipeline {(docs / kf[0]) / (dt['docs'] / dt['cpu_s']):.1f}x; datatrove language ID: {dt['language']}")
PY
"$CARGO_TARGET_DIR/release/examples/bench_compare" --kiln "$OUT/kiln-same" --datatrove "$OUT/datatrove"
# Extraction F1 against each page set's gold text, kiln vs trafilatura, same pages (the first
# LIMIT pages per set); scripts/bench-data-extract.sh adds the Rust extractors.
LIMIT=${LIMIT:-300}
EX=$CARGO_TARGET_DIR/release/examples/extract_f1
"$EX" --limit "$LIMIT" --list | flock /tmp/kiln-bench.lock python3 scripts/bench-data-extract.py "$OUT/trafilatura"
"$EX" --limit "$LIMIT" --peer "trafilatura=$OUT/trafilatura"
