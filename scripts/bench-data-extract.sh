#!/usr/bin/env bash
# Extraction quality and speed per page set: kiln's extractor vs Python trafilatura 2.3.1 with
# FineWeb's settings and the Rust crates trafilatura, rs-trafilatura and dom_smoothie (built in
# their own workspace, dev/extract-peers), on the same pages against the same gold text; word-level
# precision/recall/F1 and pages per CPU second, dev and held-out split reported apart.
# Needs: `kiln data fetch --set readability-pages` (+ `--set full` for linux-doc), and a Python
# with `pip install trafilatura==2.3.1` (PYTHON, default python3).
# Usage: scripts/bench-data-extract.sh [OUT]   (default OUT=runs/bench-data-extract; LIMIT pages
# per set, default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench-data-extract}
PYTHON=${PYTHON:-python3}
LIMIT=${LIMIT:-600}
PEERS_TARGET=${PEERS_TARGET:-target/extract-peers}
mkdir -p "$OUT"
flock /tmp/kiln-heavy.lock cargo build --release -q -p kiln-data --example extract_f1
flock /tmp/kiln-heavy.lock cargo build --release -q --manifest-path dev/extract-peers/Cargo.toml \
  --target-dir "$PEERS_TARGET"
EX=target/release/examples/extract_f1
"$EX" --limit "$LIMIT" --list > "$OUT/pages.tsv"
flock /tmp/kiln-heavy.lock bash -c "
  '$PYTHON' scripts/bench-data-extract.py '$OUT/trafilatura-py' < '$OUT/pages.tsv'
  for p in trafilatura rs-trafilatura dom_smoothie; do
    '$PEERS_TARGET/release/extract-peers' \$p '$OUT/'\$p < '$OUT/pages.tsv'
  done
  '$EX' --limit '$LIMIT' --peer 'trafilatura 2.3.1 (Python)=$OUT/trafilatura-py' \
    --peer 'trafilatura 0.6.0 (crate)=$OUT/trafilatura' --peer 'rs-trafilatura 0.2.2=$OUT/rs-trafilatura' \
    --peer 'dom_smoothie 0.19.0=$OUT/dom_smoothie'
" | tee "$OUT/report.md"
