"""datatrove side of scripts/bench-data.sh: FineWeb's stages on the same inputs as kiln.

Usage: bench-data-datatrove.py OUT_DIR INPUT... (WARC files or folders of HTML pages)
Stages: URLFilter → trafilatura.extract(favor_precision, in-process) → [LanguageFilter if its fastText model loads]
→ GopherRepetition → GopherQuality → C4(filter_no_terminal_punct=False) → FineWebQuality → PII.
One worker, one task, so CPU seconds compare per core. Writes OUT_DIR/*.jsonl.gz and prints a JSON
line with documents read and CPU seconds.
"""
import json, os, sys, time, resource
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter, URLFilter)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.writers import JsonlWriter

out, inputs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
counter = {"docs": 0}


def read_inputs(data, rank=0, world_size=1):
    for inp in inputs:
        if inp.is_dir():
            for p in sorted(inp.rglob("*.html")):
                if any(part.startswith(".") for part in p.relative_to(inp).parts):
                    continue
                rel = p.relative_to(inp).as_posix()
                counter["docs"] += 1
                yield Document(text=p.read_bytes().decode("utf-8", errors="replace"),
                               id=f"{inp.name}/{rel}", metadata={"url": f"file:///{rel}"})
        else:
            for doc in WarcReader(str(inp.parent), glob_pattern=inp.name, doc_progress=False).run():
                counter["docs"] += 1
                yield doc


def extract(data, rank=0, world_size=1):
    # datatrove's Trafilatura step runs trafilatura in a sandbox subprocess whose start-up timed
    # out on every page here; this calls the same function in-process with FineWeb's settings.
    import trafilatura
    for doc in data:
        text = trafilatura.extract(doc.text, favor_precision=True, include_comments=False, deduplicate=True)
        if text:
            doc.text = text
            yield doc


steps = [read_inputs, URLFilter(), extract]
language = "skipped (fastText model cannot be downloaded offline)"
try:
    from datatrove.pipeline.filters import LanguageFilter
    lf = LanguageFilter()
    lf.filter(Document(text="This is an English sentence about the weather.", id="probe"))
    steps.append(lf)
    language = "fastText"
except Exception as e:  # noqa: BLE001 — any failure to load the model means: skip the stage
    language += f": {type(e).__name__}"
steps += [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
          FineWebQualityFilter(), PIIFormatter(), JsonlWriter(str(out))]

t0 = time.time()
r0 = resource.getrusage(resource.RUSAGE_SELF)
LocalPipelineExecutor(pipeline=steps, tasks=1, workers=1, logging_dir=str(out / "logs")).run()
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"peer": "datatrove", "docs": counter["docs"], "cpu_s": cpu, "wall_s": time.time() - t0,
                  "language": language}))
