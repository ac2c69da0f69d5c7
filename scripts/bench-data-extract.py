"""Python trafilatura's side of the extraction benchmark (scripts/bench-data-extract.sh).

Reads `set<TAB>split<TAB>html path<TAB>relative path` lines (from `extract_f1 --list`) on stdin and
writes trafilatura's text with FineWeb's settings (favor_precision=True, include_comments=False,
deduplicate=True, as datatrove's Trafilatura step calls it) to OUT/<set>/<relative path>.txt, and
the CPU seconds of each call to OUT/cpu.tsv. Usage: ... | bench-data-extract.py OUT
"""
import sys, time
from pathlib import Path
import trafilatura

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
n, total = 0, 0.0
with open(out / "cpu.tsv", "w") as times:
    for line in sys.stdin:
        corpus, _split, path, rel = line.rstrip("\n").split("\t")
        html = Path(path).read_bytes().decode("utf-8", errors="replace")
        t0 = time.process_time()
        text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""
        dt = time.process_time() - t0
        dest = out / corpus / Path(rel).with_suffix(".txt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        times.write(f"{corpus}\t{rel}\t{dt:.6f}\n")
        n, total = n + 1, total + dt
print(f"trafilatura: {n} pages, {n / max(total, 1e-9):.1f} pages per CPU second", file=sys.stderr)
