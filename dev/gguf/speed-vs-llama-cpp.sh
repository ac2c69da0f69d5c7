#!/usr/bin/env bash
# Issue 13's speed check: kiln and llama.cpp's llama-bench on the same GGUF file, interleaved
# (round by round, alternating who goes first, so background load hits both alike): prompt
# processing (pp512: 512 tokens in one pass) and decode (tg128: 128 tokens one at a time from an
# empty cache) at 1 and 2 threads, the best of each side's runs per row, and the ratio kiln/llama.cpp
# (goal >= 1.0 on every row). Beside them: peak RSS of both (kiln: VmHWM in-process before its
# bandwidth probe; llama-bench: /usr/bin/time's max RSS), kiln's load time (mmap + tensor
# table), and kiln's decode as a fraction of a read-bandwidth probe run in the same process
# (weight bytes per token x tokens/s / probe bytes/s; goal >= 0.7).
#
# usage: dev/gguf/speed-vs-llama-cpp.sh [MODELS=smollm2-135m,gemma-3-270m] [ROUNDS=3]
# (MODELS: names from `kiln models list` or paths, comma-separated; one table per model.)
# Builds kiln (release) and llama.cpp (scripts/llama-cpp.sh: once, cached). Raw lines go to
# $OUT (default /tmp/kiln-speed-vs-llama-cpp.jsonl).
set -euo pipefail
cd "$(dirname "$0")/../.."
models=${1:-smollm2-135m,gemma-3-270m}
rounds=${2:-3}
out=${OUT:-/tmp/kiln-speed-vs-llama-cpp.jsonl}
cargo build --release -q -p kiln
cargo build --release -q -p kiln-engine --example gguf_speed
bin=$(scripts/llama-cpp.sh)
paths=()
for model in ${models//,/ }; do
  path=$(target/release/kiln models list | awk -F'\t' -v m="$model" '$1==m {print $4}')
  path=${path:-$model}
  [ -f "$path" ] || { echo "no model file for $model (kiln models fetch $model)" >&2; exit 1; }
  paths+=("$path")
done
echo "models: ${paths[*]}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
: >"$out"
kiln_run() { # path threads
  target/release/examples/gguf_speed "$1" "$2" 512 128 1 |
    python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["who"]="kiln"; d["model"]=sys.argv[1]; print(json.dumps(d))' "$1" >>"$out"
}
llama_run() { # path threads
  local tmp; tmp=$(mktemp)
  /usr/bin/time -f '%M' -o "$tmp.rss" "$bin/llama-bench" -m "$1" -t "$2" -p 512 -n 128 -r 1 -o json >"$tmp" 2>/dev/null
  python3 - "$tmp" "$tmp.rss" "$2" "$1" >>"$out" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
d = {"who": "llama.cpp", "threads": int(sys.argv[3]), "model": sys.argv[4],
     "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024}
for r in rows:
    if r["n_prompt"] > 0 and r["n_gen"] == 0: d["pp_tps"] = r["avg_ts"]
    if r["n_gen"] > 0 and r["n_prompt"] == 0: d["tg_tps"] = r["avg_ts"]
print(json.dumps(d))
EOF
  rm -f "$tmp" "$tmp.rss"
}
for r in $(seq 1 "$rounds"); do
  for path in "${paths[@]}"; do
    for t in 1 2; do
      if [ $((r % 2)) -eq 1 ]; then kiln_run "$path" "$t"; llama_run "$path" "$t"; else llama_run "$path" "$t"; kiln_run "$path" "$t"; fi
    done
  done
  echo "round $r of $rounds done" >&2
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'EOF'
import json, sys
all_rows = [json.loads(l) for l in open(sys.argv[1])]
for model in dict.fromkeys(r["model"] for r in all_rows):
    rows = [r for r in all_rows if r["model"] == model]
    def best(who, t, k):
        v = [r[k] for r in rows if r["who"] == who and r["threads"] == t and k in r]
        return max(v) if v else float("nan")
    def low(who, t, k):
        v = [r[k] for r in rows if r["who"] == who and r["threads"] == t and k in r]
        return min(v) if v else float("nan")
    print(f"\n{model}")
    print(f"{'row':<22}{'kiln':>10}{'llama.cpp':>11}{'kiln/llama':>12}")
    for t in (1, 2):
        for k, name in (("pp_tps", "pp512 tok/s"), ("tg_tps", "tg128 tok/s")):
            a, b = best("kiln", t, k), best("llama.cpp", t, k)
            print(f"{name + f' t={t}':<22}{a:>10.1f}{b:>11.1f}{a / b:>11.2f}x")
    for t in (1, 2):
        a, b = low("kiln", t, "peak_rss_mb"), low("llama.cpp", t, "peak_rss_mb")
        print(f"{f'peak RSS MB t={t}':<22}{a:>10.1f}{b:>11.1f}{a / b:>11.2f}x  (goal <= 1.10x)")
    k = [r for r in rows if r["who"] == "kiln"]
    print(f"kiln load time: {min(r['load_s'] for r in k):.3f} s (best), {max(r['load_s'] for r in k):.3f} s (worst)")
    for t in (1, 2):
        kt = [r for r in k if r["threads"] == t]
        r = max(kt, key=lambda r: r["tg_tps"])
        print(f"kiln decode vs bandwidth t={t}: {r['weight_mb_per_token']:.1f} MB/token x {r['tg_tps']:.1f} tok/s"
              f" / probe {r['probe_gbs']:.1f} GB/s = {r['tg_bw_fraction']:.2f}")
EOF
