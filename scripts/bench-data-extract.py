"""trafilatura's side of the extraction F1: reads `corpus<TAB>html root<TAB>relative path` lines
(from `extract_f1 --list`) on stdin, writes trafilatura's text (FineWeb settings:
favor_precision) to OUT/<corpus>/<relative path>.txt. Usage: ... | bench-data-extract.py OUT"""
import sys, time
from pathlib import Path
import trafilatura

out = Path(sys.argv[1])
n, t0 = 0, time.process_time()
for line in sys.stdin:
    corpus, root, rel = line.rstrip("\n").split("\t")
    html = (Path(root) / rel).read_bytes().decode("utf-8", errors="replace")
    text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""
    dest = out / corpus / Path(rel).with_suffix(".txt")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    n += 1
print(f"trafilatura: {n} pages, {n / max(time.process_time() - t0, 1e-9):.1f} pages per CPU second", file=sys.stderr)
