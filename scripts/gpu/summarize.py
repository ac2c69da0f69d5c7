"""Summarize the device check's JSON lines (stdin) into one JSON line with the ratios."""
import json, sys

rows = []
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
s = {"summary": True}
kiln = [r for r in rows if r.get("bench") == "train" and r.get("impl") == "kiln-cuda"]
for r in kiln:
    if r.get("attention") == "v1":
        s["kiln_attn_v1_tokens_per_s"] = round(r["tokens_per_s"], 1)
        continue
    s[f"kiln_{r['precision']}_tokens_per_s"] = round(r["tokens_per_s"], 1)
    s[f"kiln_{r['precision']}_mfu"] = round(r["mfu_989"], 4)
    s[f"kiln_{r['precision']}_backend_peak_mb"] = round(r["backend_peak_mb"], 1)
for r in rows:
    impl = r.get("impl", "")
    if impl.startswith("pytorch") and "train_tokens_per_s" in r:
        s[f"{impl}_tokens_per_s"] = r["train_tokens_per_s"]
    if impl.startswith("pytorch") and r.get("memory"):
        s[f"{impl}_peak_allocated_mb"] = r["peak_allocated_mb"]
best = max((r for r in kiln if r.get("attention") != "v1" and r["precision"] == "Bf16"), key=lambda r: r["tokens_per_s"], default=None)
if best:
    for peer in ("pytorch", "pytorch+compile"):
        if f"{peer}_tokens_per_s" in s:
            s[f"ratio_kiln_vs_{peer}"] = round(best["tokens_per_s"] / s[f"{peer}_tokens_per_s"], 3)
        if f"{peer}_peak_allocated_mb" in s:
            s[f"memory_ratio_kiln_vs_{peer}"] = round(best["backend_peak_mb"] / s[f"{peer}_peak_allocated_mb"], 3)
for r in rows:
    if r.get("bench") == "decode":
        s[f"decode_rows{r['rows']}_tokens_per_s"] = round(r["tokens_per_s"], 1)
fails = [r for r in rows if r.get("ok") is False]
s["checks"] = sum(1 for r in rows if "ok" in r)
s["failed_checks"] = len(fails)
print(json.dumps(s))
