"""Run torch_ref.py (beside this file's copy in dist/gpu) and add one JSON line with its peak GPU
memory: python3 torch_peak.py TORCH_REF gpu [--compile]."""
import json, runpy, sys
import torch

path = sys.argv[1]
sys.argv = [path] + sys.argv[2:]
runpy.run_path(path, run_name="__main__")
print(json.dumps({"impl": "pytorch" + ("+compile" if "--compile" in sys.argv else ""), "memory": True,
                  "peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                  "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}))
