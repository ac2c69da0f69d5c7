"""Compare validation-loss curves of kiln and PyTorch runs on the same batches (issue 20's gate).

  python3 parity_report.py --kiln RUN/metrics.jsonl --same TORCH_KILN_INIT.jsonl
                           --seeds TORCH_SEED1.jsonl TORCH_SEED2.jsonl [--svg curves.svg]

--same is PyTorch started from kiln's initial parameters (only the arithmetic differs); --seeds
are PyTorch runs from their own draws of the same init scheme, whose difference is the
run-to-run noise. Over the second half of the evals (the first are dominated by the warm-up's
fast fall, where any two runs differ most):
  noise = max |seed1 - seed2|;  gap = max |kiln - same|;  pass when gap <= max(noise, 0.01).
Prints one JSON line (every curve, noise, gap, pass) and writes an SVG of the curves.
"""
import argparse, json, sys


def curve(path):
    evals, losses, tps = {}, {}, []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "eval":
                evals[r["step"]] = r["val_loss"]
            elif "loss" in r and isinstance(r.get("loss"), (int, float)) and "step" in r:
                losses[r["step"]] = r["loss"]
                if "tok_per_s" in r:
                    tps.append(r["tok_per_s"])
    return evals, losses, tps


def svg(series, path, title):
    w, h, m = 720, 420, 50
    pts = [(s, v) for _, c in series for s, v in c.items()]
    if not pts:
        return
    x0, x1 = min(s for s, _ in pts), max(s for s, _ in pts)
    y0, y1 = min(v for _, v in pts), max(v for _, v in pts)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-3)
    X = lambda s: m + (s - x0) / (x1 - x0) * (w - 2 * m)
    Y = lambda v: h - m - (v - y0) / (y1 - y0) * (h - 2 * m)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">step</text>']
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{m - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        s = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{X(s):.1f}" y="{h - m + 16}" text-anchor="middle">{s:.0f}</text>')
    for i, (name, c) in enumerate(series):
        col = colors[i % len(colors)]
        p = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in sorted(c.items()))
        out.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{p}"/>')
        out.append(f'<text x="{w - m - 200}" y="{m + 16 * i}" fill="{col}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--same", required=True)
    ap.add_argument("--seeds", nargs=2, required=True)
    ap.add_argument("--svg")
    a = ap.parse_args()
    k, _, ktps = curve(a.kiln)
    s, _, stps = curve(a.same)
    r1, _, _ = curve(a.seeds[0])
    r2, _, _ = curve(a.seeds[1])
    steps = sorted(set(k) & set(s) & set(r1) & set(r2))
    if not steps:
        print(json.dumps({"check": "learning_parity", "ok": False,
                          "error": "no eval step common to all four runs"}))
        sys.exit(1)
    late = steps[len(steps) // 2:]
    noise = max(abs(r1[t] - r2[t]) for t in late)
    gap = max(abs(k[t] - s[t]) for t in late)
    gap_seeds = max(abs(k[t] - (r1[t] + r2[t]) / 2) for t in late)
    ok = gap <= max(noise, 0.01)
    med = lambda v: sorted(v)[len(v) // 2] if v else None
    rep = {"check": "learning_parity", "ok": ok, "noise": round(noise, 4), "gap": round(gap, 4),
           "gap_vs_seed_mean": round(gap_seeds, 4), "steps_compared": late,
           "final": {"kiln": k[steps[-1]], "torch_kiln_init": s[steps[-1]],
                     "torch_seed_a": r1[steps[-1]], "torch_seed_b": r2[steps[-1]]},
           "kiln_tok_per_s_median": med(ktps[5:]), "torch_tok_per_s_median": med(stps[5:]),
           "curves": {"step": steps, "kiln": [k[t] for t in steps],
                      "torch_kiln_init": [s[t] for t in steps],
                      "torch_seed_a": [r1[t] for t in steps],
                      "torch_seed_b": [r2[t] for t in steps]}}
    print(json.dumps(rep))
    if a.svg:
        svg([("kiln (cuda, bf16)", k), ("PyTorch, kiln's init", s), ("PyTorch, seed A", r1),
             ("PyTorch, seed B", r2)], a.svg, "validation loss, same batches")


if __name__ == "__main__":
    main()
