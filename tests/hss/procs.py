"""Run real HSS processes (``imsaka run hss -c FILE``) for the multi-process tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import HOME, HSS_HOST, ICSCF_HOST, SCSCF_HOST, SCSCF_NAME

TOKEN = "test-token-0123456789"


def write_config(path: Path, db: str, *, api_port: int = 0, diameter_port: int = 0) -> Path:
    path.write_text(
        f"""
[network]
home_domains = ["{HOME}"]

[hss]
database = "{db}"
diameter_host = "{HSS_HOST}"
diameter_realm = "{HOME}"
diameter_address = "127.0.0.1"
diameter_port = {diameter_port}
peers = ["{SCSCF_HOST}", "{ICSCF_HOST}"]
visited_networks = ["visited1.net"]
api_address = "127.0.0.1"
api_port = {api_port}
api_token = "{TOKEN}"

[[hss.scscfs]]
name = "{SCSCF_NAME}"
diameter_host = "{SCSCF_HOST}"
"""
    )
    return path


class HssProcess:
    """One `imsaka run hss` child; `port` is the Diameter port it printed."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # stderr to a file: a pipe nobody reads would block the child once full.
        self.log_path = config.with_suffix(f".{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imsaka", "-v", "run", "hss", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.port = 0
        self.api_port = 0
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"Diameter \S+ on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                api = re.search(r"REST API on 127\.0\.0\.1:(\d+)", line)
                self.api_port = int(api.group(1)) if api else 0
                return
        self.stop()
        err = self.log()
        raise RuntimeError(f"HSS process did not start: {err[-2000:]}")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()
