"""The device check's JSON lines → one summary line with the ratios (stdin → stdout), plus two
helpers device-check.sh calls:
  summarize.py                          < all.jsonl   the summary
  summarize.py compare RUN_A RUN_B HALF [label]       two `kiln pretrain` runs' losses, step by step
  summarize.py same-text A.txt B.txt                  do two `kiln sample` outputs agree
"""
import json, sys


def step_losses(run):
    out = {}
    with open(f"{run}/metrics.jsonl") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "event" not in r and "loss" in r:
                out[r["step"]] = r
    return out


def compare(a, b, half, label="resume"):
    """Run A uninterrupted, run B resumed at `half`: max |Δloss| before (run-to-run noise: GPU
    atomics) and after the resume point, and what the runs reached."""
    la, lb = step_losses(a), step_losses(b)
    common = sorted(set(la) & set(lb))
    before = [abs(la[s]["loss"] - lb[s]["loss"]) for s in common if s <= half]
    after = [abs(la[s]["loss"] - lb[s]["loss"]) for s in common if s > half]
    evals = []
    with open(f"{a}/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "eval":
                evals.append((r["step"], r.get("val_bpb"), r.get("val_loss")))
    steps = sorted(la)
    tps = [la[s]["tok_per_s"] for s in steps[len(steps) // 10:]] if steps else []
    first = la[steps[0]]["loss"] if steps else None
    last = la[steps[-1]]["loss"] if steps else None
    max_after = max(after) if after else None
    ok = bool(after) and last is not None and last < 0.7 * first and max_after < 0.1
    return {"check": f"pretrain_{label}", "steps": len(steps), "resumed_at": half,
            "steps_compared_after": len(after), "max_loss_diff_after_resume": max_after,
            "max_loss_diff_before_resume": max(before) if before else None,
            "loss_first": first, "loss_last": last,
            "val_bpb": [[s, b] for s, b, _ in evals], "val_loss_last": evals[-1][2] if evals else None,
            "tokens_per_s_median": sorted(tps)[len(tps) // 2] if tps else None, "ok": ok}


def same_text(a, b):
    ta, tb = open(a).read(), open(b).read()
    n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return {"check": "greedy_text_device_vs_cpu", "same": ta == tb and len(ta) > 0,
            "common_prefix_chars": n, "chars": [len(ta), len(tb)]}


def summary(lines):
    rows = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    s = {"summary": True}
    # `kiln bench train --preset gpu-gpt2-124m` (torch_ref.py's fields)
    kb = [r for r in rows if r.get("impl") == "kiln" and r.get("mode") == "gpu"]
    for r in kb:
        p = r["precision"]
        s[f"kiln_{p}_tokens_per_s"] = r["train_tokens_per_s"]
        s[f"kiln_{p}_step_ms"] = r["step_ms"]
        s[f"kiln_{p}_mfu"] = r.get("mfu_vs_989tf_bf16")
        s[f"kiln_{p}_peak_gpu_memory_mb"] = r.get("peak_gpu_memory_mb")
        s[f"kiln_{p}_decode_kvcache_tokens_per_s"] = r.get("decode_tokens_per_s_kvcache")
        s["flop_formula"] = r.get("flop_formula")
    # cuda_check bench (the per-op profile run)
    for r in rows:
        if r.get("bench") == "train" and r.get("impl") == "kiln-cuda":
            s[f"cuda_check_{r['precision']}_tokens_per_s"] = round(r["tokens_per_s"], 1)
        if r.get("bench") == "train_gemm_mode":
            mode = f"{r['matmul']}|{r.get('matmul_bias')}|fused={r.get('fused_bf16')}"
            s[f"gemm_mode_{mode}_step_ms"] = round(r["step_ms_median"], 2)
    for r in rows:
        impl = r.get("impl", "")
        if impl.startswith("pytorch") and "train_tokens_per_s" in r:
            s[f"{impl}_tokens_per_s"] = r["train_tokens_per_s"]
            s[f"{impl}_mfu"] = r.get("mfu_vs_989tf_bf16")
        if impl.startswith("pytorch") and r.get("memory"):
            s[f"{impl}_peak_allocated_mb"] = r["peak_allocated_mb"]
    best = max((r for r in kb if r["precision"] == "bf16"), key=lambda r: r["train_tokens_per_s"], default=None)
    if best:
        for peer in ("pytorch", "pytorch+compile"):
            if f"{peer}_tokens_per_s" in s:
                s[f"ratio_kiln_vs_{peer}"] = round(best["train_tokens_per_s"] / s[f"{peer}_tokens_per_s"], 3)
            if f"{peer}_peak_allocated_mb" in s and best.get("peak_gpu_memory_mb"):
                s[f"memory_ratio_kiln_vs_{peer}"] = round(best["peak_gpu_memory_mb"] / s[f"{peer}_peak_allocated_mb"], 3)
    for r in rows:
        if r.get("bench") == "decode":
            s[f"decode_124m_rows{r['rows']}_tokens_per_s"] = round(r["tokens_per_s"], 1)
        if r.get("sample") == "stats":
            s[f"kiln_sample_n{r['num_samples']}_tokens_per_s"] = round(r["tokens_per_s"], 1)
        if str(r.get("check", "")).startswith("pretrain_"):
            s[f"{r['check']}_max_loss_diff"] = r.get("max_loss_diff_after_resume")
            if r["check"] == "pretrain_resume" and "loss_first" in r:
                s["pretrain_loss_first_last"] = [r["loss_first"], r["loss_last"]]
                s["pretrain_noise_before_resume"] = r["max_loss_diff_before_resume"]
                s["pretrain_tokens_per_s"] = r["tokens_per_s_median"]
        if r.get("check") == "greedy_text_device_vs_cpu":
            s["greedy_text_same_as_cpu"] = r.get("same")
    stages = [r for r in rows if "stage" in r]
    s["stages_failed"] = [r["stage"] for r in stages if r.get("rc", 0) != 0 or r.get("ok") is False]
    s["seconds"] = round(sum(r.get("seconds", 0) for r in stages), 1)
    fails = [r for r in rows if r.get("ok") is False]
    s["checks"] = sum(1 for r in rows if "ok" in r)
    s["failed_checks"] = len(fails)
    return s


if __name__ == "__main__":
    a = sys.argv[1:]
    try:
        if a and a[0] == "compare":
            print(json.dumps(compare(a[1], a[2], int(a[3]), *(a[4:5]))))
        elif a and a[0] == "same-text":
            print(json.dumps(same_text(a[1], a[2])))
    except (OSError, ValueError, KeyError) as e:  # a failed stage left no run: say so, as a failed check
        name = f"pretrain_{a[4] if len(a) > 4 else 'resume'}" if a[0] == "compare" else "greedy_text_device_vs_cpu"
        print(json.dumps({"check": name, "ok": False, "error": f"{type(e).__name__}: {e}"}))
    if not a:
        print(json.dumps(summary(sys.stdin)))
