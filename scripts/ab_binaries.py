"""Interleaved A/B of two builds of the same benchmark: runs A B A B … and prints each pair's
tokens/s ratio B/A and their median. Adjacent runs see the same phase of this noisy shared host;
separate runs minutes apart do not.

Usage: python3 scripts/ab_binaries.py --a "OLD_CMD" --b "NEW_CMD" [--pairs 12]
e.g.   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=target/old \\
           cargo build --release -p kiln-engine --example train_steps)
       python3 scripts/ab_binaries.py --pairs 12 \\
           --a "/tmp/old/target/old/release/examples/train_steps 2 10" \\
           --b "target/release/examples/train_steps 2 10"
Works with any command printing `N tokens/s` (the train_steps example) or a JSON line with
`train_tokens_per_s` (`kiln bench train --preset cpu-small`).
"""
import argparse, json, re, shlex, statistics, subprocess, sys


def tokens_per_s(cmd):
    out = subprocess.run(shlex.split(cmd), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{cmd} failed:\n{out.stderr}")
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["train_tokens_per_s"])
        m = re.search(r"([0-9.]+) tokens/s", line)
        if m:
            return float(m.group(1))
    sys.exit(f"{cmd}: no tokens/s in its output:\n{out.stdout}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="baseline command")
    ap.add_argument("--b", required=True, help="candidate command")
    ap.add_argument("--pairs", type=int, default=12)
    args = ap.parse_args()
    ratios = []
    for i in range(args.pairs):
        a = tokens_per_s(args.a)
        b = tokens_per_s(args.b)
        ratios.append(b / a)
        print(f"pair {i + 1}: A {a:.0f}  B {b:.0f}  B/A {b / a:.3f}", flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(json.dumps({"pairs": len(ratios), "median_b_over_a": round(statistics.median(ratios), 3),
                      "quartiles": [round(q[0], 3), round(q[2], 3)]}))


if __name__ == "__main__":
    main()
