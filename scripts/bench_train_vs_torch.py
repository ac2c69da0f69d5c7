"""Interleaved training benchmark: kiln vs the PyTorch reference, A B A B …, same machine, same
invocation; prints each run's JSON and the ratios (medians).

Usage: python3 scripts/bench_train_vs_torch.py [--rounds 3] [--kiln target/release/kiln]
                                               [--torch-python python3] [--out results.jsonl]
`--out` keeps the raw results (every run's JSON, then the summary) as JSON Lines, e.g. under
docs/results/ for the README's table.
Each run is wrapped in `flock /tmp/kiln-bench.lock` so two benchmarks never overlap; peak RSS of
each child comes from wait4's rusage (kernel-measured, same method for both).
"""
import argparse, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_REF = os.path.join(HERE, "..", "..", "shared", "bench", "torch_ref.py")
if not os.path.exists(TORCH_REF):
    TORCH_REF = "/work/shared/bench/torch_ref.py"


def run(cmd):
    p = subprocess.Popen(["flock", "/tmp/kiln-bench.lock"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')}")
    line = [l for l in out.decode().splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    r["rss_mb_wait4"] = round(ru.ru_maxrss / 1024, 1)  # flock's child is the benchmark; flock itself is tiny
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kiln", default=os.path.join(HERE, "..", "target", "release", "kiln"))
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--out", help="write every run's JSON and the summary here (JSON Lines)")
    a = ap.parse_args()
    ks, ts = [], []
    for i in range(a.rounds):
        k = run([a.kiln, "bench", "train", "--preset", "cpu-small"])
        print("kiln ", json.dumps(k), flush=True)
        t = run([a.torch_python, TORCH_REF, "cpu"])
        print("torch", json.dumps(t), flush=True)
        ks.append(k)
        ts.append(t)
    med = lambda rs, f: statistics.median(r[f] for r in rs)
    ratio = lambda f: med(ks, f) / med(ts, f)
    summary = {
        "rounds": a.rounds,
        "kiln_train_tokens_per_s": med(ks, "train_tokens_per_s"),
        "torch_train_tokens_per_s": med(ts, "train_tokens_per_s"),
        "train_speed_ratio": round(ratio("train_tokens_per_s"), 3),
        "kiln_rss_mb": med(ks, "rss_mb_wait4"),
        "torch_rss_mb": med(ts, "rss_mb_wait4"),
        "rss_ratio": round(ratio("rss_mb_wait4"), 3),
        "decode_nocache_ratio": round(ratio("decode_tokens_per_s_nocache"), 3),
        "kiln_decode_kvcache_tokens_per_s": med(ks, "decode_tokens_per_s_kvcache"),
        "kiln_fraction_of_peak": med(ks, "fraction_of_peak"),
        "kiln_matmul_probe_gflops": med(ks, "matmul_probe_gflops"),
    }
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "w") as f:
            for k, t in zip(ks, ts):
                f.write(json.dumps({"peer": "kiln", **k}) + "\n")
                f.write(json.dumps({"peer": "torch", **t}) + "\n")
            f.write(json.dumps({"summary": summary}) + "\n")


if __name__ == "__main__":
    main()
