"""Shared by the `kiln serve` scripts: start the real binary on a free loopback port, wait until
it listens, stop it. The server logs `serving "<name>" on http://<addr>` once it accepts
connections; the scripts read the address from that line (the port is chosen by the OS)."""

import os
import re
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILN = os.environ.get("KILN", os.path.join(ROOT, "target", "release", "kiln"))


class Server:
    """`kiln serve` with `args` (on port 0) until `stop()`; `url` is its http://host:port."""

    def __init__(self, args, log_path=None, timeout=300):
        cmd = [KILN, "serve", "--port", "0", *args]
        self.log_lines = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = open(log_path, "w") if log_path else None
        found = threading.Event()
        self.url = None

        def pump():
            for line in self.proc.stderr:
                self.log_lines.append(line)
                if self.log:
                    self.log.write(line)
                    self.log.flush()
                m = re.search(r"on (http://[0-9.:\[\]]+)", line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        t0 = time.time()
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                self.stop()
                raise RuntimeError("kiln serve did not start:\n" + "".join(self.log_lines[-30:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
