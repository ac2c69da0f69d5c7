#!/usr/bin/env python3
"""Load benchmark: `kiln serve` against llama.cpp's `llama-server` on the same GGUF file.

For each concurrency level (default 1, 8, 32, 64) both servers are started with that many
parallel slots (`--parallel N` / `-np N`, the same tokens per slot), then N clients stream chat
completions back to back for --seconds; the two servers alternate which goes first from level
to level (interleaved, so a slow spell of a shared machine hits both). Loopback only; bounded in
time (--seconds per server and level) and count (--max-requests per run). At the deadline the
clients hang up mid-stream (kiln then cancels those requests).

Reported per server and level: aggregate tokens/s (streamed content chunks that arrived inside
the window / window length), p50/p99 time to first token, p50/p99 inter-token latency, finished
requests, errors (non-200 answers, broken streams; must be 0), the server's RSS after the first
10% of the window and at its end, and its peak RSS (VmHWM); then kiln/llama ratios. Raw numbers
go to --out as JSON.

usage: scripts/serve/load_bench.py [--model smollm2-135m] [--seconds 60] [--levels 1,8,32,64]
needs: target/release/kiln (cargo build --release -p kiln); scripts/llama-cpp.sh (built once)
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gguf_path(model):
    if os.path.isfile(model):
        return os.path.abspath(model)
    out = subprocess.run([common.KILN, "models", "list"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split("\t")
        if f[0] == model and len(f) >= 4 and f[2] == "fetched":
            return f[3]
    sys.exit(f"{model} is not fetched: run `kiln models fetch {model}`")


def rss_kb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """A server process listening on 127.0.0.1:port, ready once /health answers 200."""

    def __init__(self, cmd, port, log_path):
        self.port = port
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited; see {log_path}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if time.time() - t0 > 300:
                raise RuntimeError(f"{cmd[0]} did not become healthy; see {log_path}")
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


PROMPTS = [
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, step by step.",
    "Describe a journey across a desert on a camel.",
    "Tell me about the history of the bicycle.",
    "Write a long letter to a friend about a summer holiday.",
]


def client(port, model_name, cid, args, deadline, rec, lock, count):
    """Streams requests back to back until the deadline; records times per request."""
    k = 0
    while time.perf_counter() < deadline:
        with lock:
            if count[0] >= args.max_requests:
                return
            count[0] += 1
        body = {"model": model_name, "stream": True, "max_tokens": args.max_tokens,
                "temperature": args.temperature, "seed": cid * 100003 + k,
                "messages": [{"role": "user", "content": f"({cid}.{k}) " + PROMPTS[(cid + k) % len(PROMPTS)]}]}
        k += 1
        t0 = time.perf_counter()
        times, err, finished = [], None, False
        conn = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.1, deadline - t0))
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                err = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            else:
                while True:
                    now = time.perf_counter()
                    if now >= deadline:
                        break  # hang up mid-stream
                    conn.sock.settimeout(max(0.05, deadline - now))
                    line = resp.readline()
                    if not line:
                        err = "stream ended without [DONE]"
                        break
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        finished = True
                        break
                    j = json.loads(data)
                    if "error" in j:
                        err = f"error event: {j['error']}"
                        break
                    for ch in j.get("choices") or []:
                        if (ch.get("delta") or {}).get("content"):
                            times.append(time.perf_counter())
        except (socket.timeout, TimeoutError):
            pass  # the deadline: hang up mid-stream
        except OSError as e:
            if time.perf_counter() < deadline:
                err = f"{type(e).__name__}: {e}"
        finally:
            if conn:
                conn.close()
        with lock:
            rec.append({"t0": t0, "times": times, "err": err, "finished": finished})


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def warm_up(port, model_name):
    """One short request first: page in the weights so the first measured request does not pay."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
              body=json.dumps({"model": model_name, "max_tokens": 4, "temperature": 0,
                               "messages": [{"role": "user", "content": "Hi"}]}))
    r = c.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"warm-up request failed: HTTP {r.status}")


def run_level(name, proc, model_name, level, args):
    warm_up(proc.port, model_name)
    rec, lock, count = [], threading.Lock(), [0]
    start = time.perf_counter()
    deadline = start + args.seconds
    threads = [threading.Thread(target=client, args=(proc.port, model_name, c, args, deadline, rec, lock, count))
               for c in range(level)]
    rss_warm = 0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if not rss_warm and time.perf_counter() > start + 0.1 * args.seconds:
            rss_warm = rss_kb(proc.proc.pid)
        time.sleep(0.1)
    tokens = sum(1 for r in rec for t in r["times"] if t <= deadline)
    ttft = [r["times"][0] - r["t0"] for r in rec if r["times"]]
    itl = [b - a for r in rec for a, b in zip(r["times"], r["times"][1:])]
    errors = [r["err"] for r in rec if r["err"]]
    res = {
        "server": name, "parallel": level, "seconds": args.seconds,
        "tokens_per_s": tokens / args.seconds,
        "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99),
        "requests": len(rec), "finished": sum(r["finished"] for r in rec),
        "with_first_token": len(ttft), "errors": len(errors), "error_samples": errors[:3],
        "rss_mb_warm": rss_warm / 1024, "rss_mb_end": rss_kb(proc.proc.pid) / 1024,
        "rss_mb_peak": rss_kb(proc.proc.pid, "VmHWM") / 1024,
    }
    return res


def soak(name, proc, model_name, args):
    """`--soak` requests back to back from 8 clients (short replies): the server's RSS after the
    first fifth of them and at the end. A server that leaks per request grows between the two."""
    warm_up(proc.port, model_name)
    a = argparse.Namespace(**vars(args))
    a.max_requests, a.max_tokens = args.soak, 16
    rec, lock, count = [], threading.Lock(), [0]
    deadline = time.perf_counter() + 900
    threads = [threading.Thread(target=client, args=(proc.port, model_name, c, a, deadline, rec, lock, count))
               for c in range(8)]
    for t in threads:
        t.start()
    marks = []  # (requests finished, RSS kB)
    while any(t.is_alive() for t in threads):
        with lock:
            done = len(rec)
        marks.append((done, rss_kb(proc.proc.pid)))
        time.sleep(0.1)
    marks.append((len(rec), rss_kb(proc.proc.pid)))
    fifth = next((kb for n, kb in marks if n >= args.soak // 5), marks[-1][1])
    return {"server": name, "soak_requests": len(rec), "errors": sum(1 for r in rec if r["err"]),
            "rss_mb_after_fifth": fifth / 1024, "rss_mb_end": marks[-1][1] / 1024,
            "rss_mb_peak": rss_kb(proc.proc.pid, "VmHWM") / 1024}


def ms(x):
    return "-" if x is None else f"{x * 1000:.0f}"


def server_cmd(name, path, port, level, args, llama):
    if name == "kiln":
        return [common.KILN, "serve", "--model", path, "--name", "bench", "--port", str(port),
                "--parallel", str(level), "--ctx", str(args.ctx), "--threads", str(args.threads),
                "--queue", str(max(64, level))]
    return [llama, "-m", path, "--host", "127.0.0.1", "--port", str(port), "-np", str(level),
            "-c", str(args.ctx * level), "-t", str(args.threads), "--alias", "bench"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalogue name or GGUF path")
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=5000, help="per server and level")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--ctx", type=int, default=512, help="tokens per slot")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kiln", default=common.KILN)
    ap.add_argument("--llama-server", help="default: from scripts/llama-cpp.sh")
    ap.add_argument("--only", choices=["kiln", "llama"], help="run one server only")
    ap.add_argument("--out", default="/tmp/kiln-serve-bench")
    ap.add_argument("--soak", type=int, default=1000,
                    help="then this many short requests per server at 8 clients, RSS watched (0: skip)")
    args = ap.parse_args()
    common.KILN = args.kiln
    os.makedirs(args.out, exist_ok=True)
    path = gguf_path(args.model)
    llama = args.llama_server
    if not llama and args.only != "kiln":
        bindir = subprocess.run(["bash", os.path.join(common.ROOT, "scripts", "llama-cpp.sh")],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        llama = os.path.join(bindir, "llama-server")
    levels = [int(x) for x in args.levels.split(",")]
    servers = ["kiln", "llama"] if not args.only else [args.only]
    print(f"model {path}; {args.seconds:g} s per server and level; max_tokens {args.max_tokens}, "
          f"temperature {args.temperature}, {args.ctx} tokens per slot, {args.threads} threads", flush=True)
    results = []
    for i, level in enumerate(levels):
        order = servers if i % 2 == 0 else servers[::-1]
        for name in order:
            port = free_port()
            log = os.path.join(args.out, f"{name}-{level}.log")
            proc = Proc(server_cmd(name, path, port, level, args, llama), port, log)
            try:
                r = run_level(name, proc, "bench", level, args)
            finally:
                proc.stop()
            results.append(r)
            print(f"{name:5} x{level:<3} {r['tokens_per_s']:8.1f} tok/s  ttft p50/p99 {ms(r['ttft_p50'])}/"
                  f"{ms(r['ttft_p99'])} ms  itl p50/p99 {ms(r['itl_p50'])}/{ms(r['itl_p99'])} ms  "
                  f"{r['requests']} req ({r['finished']} done)  errors {r['errors']}  "
                  f"rss {r['rss_mb_warm']:.0f}→{r['rss_mb_end']:.0f} MB (peak {r['rss_mb_peak']:.0f})", flush=True)
            for e in r["error_samples"]:
                print(f"      error: {e}")
    if args.soak:
        for name in servers:
            port = free_port()
            log = os.path.join(args.out, f"{name}-soak.log")
            proc = Proc(server_cmd(name, path, port, 8, args, llama), port, log)
            try:
                r = soak(name, proc, "bench", args)
            finally:
                proc.stop()
            results.append(r)
            grow = r["rss_mb_end"] / r["rss_mb_after_fifth"] - 1 if r["rss_mb_after_fifth"] else float("nan")
            print(f"{name:5} soak: {r['soak_requests']} requests, errors {r['errors']}, RSS after the first fifth "
                  f"{r['rss_mb_after_fifth']:.0f} MB, at the end {r['rss_mb_end']:.0f} MB ({grow:+.1%}), "
                  f"peak {r['rss_mb_peak']:.0f} MB", flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if len(servers) == 2:
        print("\nkiln / llama-server (tokens/s: higher is better for kiln; p99 TTFT: lower is better)")
        for level in levels:
            k = next(r for r in results if r["server"] == "kiln" and r.get("parallel") == level)
            ll = next(r for r in results if r["server"] == "llama" and r.get("parallel") == level)
            tps = k["tokens_per_s"] / ll["tokens_per_s"] if ll["tokens_per_s"] else float("nan")
            tt = (k["ttft_p99"] / ll["ttft_p99"]) if k["ttft_p99"] and ll["ttft_p99"] else float("nan")
            print(f"  x{level:<3} tokens/s {tps:6.3f}x   p99 TTFT {tt:6.3f}x")
    print(f"raw results: {os.path.join(args.out, 'results.json')}")
    bad = sum(r["errors"] for r in results)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
