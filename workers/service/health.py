"""One HTTP port per worker process: ``/metrics`` (Prometheus), ``/healthz`` (liveness) and
``/readyz`` (readiness), served from threads so that a busy event loop never hides them.

- **Ready** means the worker can do its job now: Redis answers PING (asked on every probe,
  with a short timeout), the worker's own connection is up (after an outage, once the
  worker has reconnected: ``"redis": "reconnecting"`` until then) and the worker holds a
  routing model (the snapshot it loaded from Redis or disk, or the configured initial
  policy). A router that is not ready is taken out
  of service by Kubernetes; it is not restarted.
- **Live** means the worker's event loop is turning: the service beats a heartbeat every
  second, and a loop that has not beaten for ``stall_s`` is reported dead, so that
  Kubernetes restarts the process. A lost Redis makes a worker unready, never dead: a
  restart would not bring Redis back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bandit.errors import MetalLMError

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 1.0
DEFAULT_STALL_S = 60.0  # event loop silent this long: dead (a batch takes well under 1 s)
REDIS_PROBE_TIMEOUT_S = 1.0
PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass
class HealthState:
    """What the service tells the probes. ``model_version`` gives the version of the model the
    worker holds, or None while it has none; ``last_beat`` and ``redis_connected`` are
    written by the event loop."""

    model_version: Callable[[], int | None] = lambda: None
    last_beat: float = field(default_factory=time.monotonic)
    redis_connected: bool = True  # False from a lost connection until the worker reconnects

    def beat(self) -> None:
        self.last_beat = time.monotonic()


class HealthServer:
    """Serves metrics and probes on ``host:port`` (port 0: a free port, see ``port``)."""

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        redis_url: str,
        state: HealthState,
        host: str = "0.0.0.0",
        stall_s: float = DEFAULT_STALL_S,
    ) -> None:
        self.registry, self.state, self.stall_s = registry, state, stall_s
        try:
            self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as exc:
            raise MetalLMError(
                f"cannot serve metrics and probes on {host}:{port}: {exc.strerror}; "
                "choose another metrics port (--metrics-port, METALLM_METRICS_PORT)"
            ) from None
        self._redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=REDIS_PROBE_TIMEOUT_S,
            socket_connect_timeout=REDIS_PROBE_TIMEOUT_S,
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metallm-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._redis.close()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        version = self.state.model_version()
        try:
            self._redis.ping()
            redis_state = "ok" if self.state.redis_connected else "reconnecting"
        except redis.RedisError as exc:
            redis_state = f"unreachable: {exc.__class__.__name__}: {exc}"
        ready = redis_state == "ok" and version is not None
        return ready, {"ready": ready, "redis": redis_state, "model_version": version}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        silent_s = time.monotonic() - self.state.last_beat
        live = silent_s < self.stall_s
        return live, {"live": live, "event_loop_silent_s": round(silent_s, 3),
                      "stall_s": self.stall_s}  # fmt: skip


def _handler_for(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(server.registry), content_type)
            elif path in ("/healthz", "/readyz"):
                ok, body = server.liveness() if path == "/healthz" else server.readiness()
                self._send(200 if ok else 503, json.dumps(body).encode() + b"\n",
                           "application/json")  # fmt: skip
            else:
                msg = f"no such path {path!r}; try {', '.join(PATHS)}\n"
                self._send(404, msg.encode(), "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health %s: " + format, self.client_address[0], *args)

    return Handler
