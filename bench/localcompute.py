"""A compute for the API scripts under bench/: examples/compute.json on free loopback ports,
trusting a fresh Ed25519 key (made by `compute_ctl keygen`), with a token for it."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPUTE_ID = "bench-api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCompute:
    def __init__(self, binary: Path):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="bench-api-"))
        self.dir.chmod(0o755)
        self.pg_port, self.port, self.internal_port = free_port(), free_port(), free_port()
        key = self.dir / "key.pem"
        config = subprocess.run(
            [binary, "keygen", "--key", key, "--config", ROOT / "examples/compute.json"],
            check=True, capture_output=True, text=True).stdout
        self.config = json.loads(config)
        (self.dir / "config.json").write_text(config)
        self.token = subprocess.run(
            [binary, "token", "--key", key, "-i", COMPUTE_ID, "--ttl", "0"],
            check=True, capture_output=True, text=True).stdout.strip()
        self.log_path = self.dir / "compute_ctl.log"
        self.proc = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self):
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, "-D", self.dir / "pgdata",
             "-C", f"postgresql://cloud_admin@127.0.0.1:{self.pg_port}/postgres",
             "-i", COMPUTE_ID, "-c", self.dir / "config.json",
             "--external-http-port", str(self.port), "--external-http-addr", "127.0.0.1",
             "--internal-http-port", str(self.internal_port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"compute_ctl exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.internal_port}/status", timeout=5) as r:
                    if json.load(r)["status"] == "running":
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise SystemExit("compute not running after 120 s")

    def request(self, method: str, path: str, body=None) -> int:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.request("POST", "/terminate")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
