"""A local LLM stand-in that replays what real models answered to the same queries.

It speaks two wire protocols, so the real ``openai`` and ``boto3`` clients talk to it:

- OpenAI chat completions: ``POST /v1/chat/completions`` (``model`` = the arm's model id)
- Bedrock Runtime Converse: ``POST /model/{modelId}/converse``

For each prompt it finds the query (by undoing the arm's prompt template), answers with
that model's recorded answer, and reports token usage that makes the arm's price give the
recorded cost. Latency (normal, in ms) and an error rate can be injected for testing.

Two admin routes let a fault-injection run steer and audit it while it serves:

- ``POST /admin/faults`` with JSON ``{"latency_ms", "latency_sd_ms", "error_rate"}`` (each
  optional; omitted ones keep their value) replaces the injected faults at once;
- ``GET /admin/stats`` gives the requests and injected errors so far and, per recorded query
  text, how many successful answers it was given (``answers``; ``unknown`` counts answers to
  prompts that are not recorded queries), so that a query paid for twice shows.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np

from bandit.arms import Arm
from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from bandit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayAnswer:
    text: str
    tokens_in: int
    tokens_out: int
    query: str | None = None  # the recorded query text answered (None: not a recorded query)


class ReplayBook:
    """Recorded answers by (model id, prompt)."""

    def __init__(
        self, ds: Dataset, config: RoutingConfig, unknown_answer: str | None = None
    ) -> None:
        """``unknown_answer``: what to answer a prompt that is not a recorded query (at the
        arm's typical token counts); None answers such prompts with a 404."""
        self.unknown_answer = unknown_answer
        self._rows = {str(t): i for i, t in enumerate(ds.texts)}
        self._arms: dict[str, tuple[Arm, int]] = {}
        for arm in config.arms.arms:
            if arm.name not in ds.arms:
                raise ConfigError(
                    f"arm {arm.name!r} has no recorded answers in data set {ds.name!r}"
                )
            self._arms[arm.model_id] = (arm, ds.arms.index(arm.name))
        self._ds = ds

    @property
    def model_ids(self) -> list[str]:
        return list(self._arms)

    def answer(self, model_id: str, prompt: str) -> ReplayAnswer:
        if model_id not in self._arms:
            raise LookupError(
                f"unknown model {model_id!r}; this replay server has: {', '.join(self._arms)}"
            )
        arm, col = self._arms[model_id]
        prefix, _, suffix = arm.prompt_template.partition("{text}")
        text = prompt
        if prompt.startswith(prefix) and prompt.endswith(suffix):
            text = prompt[len(prefix) : len(prompt) - len(suffix)]
        row = self._rows.get(text)
        if row is None and self.unknown_answer is not None:
            return ReplayAnswer(self.unknown_answer, arm.typical_tokens_in, arm.typical_tokens_out)
        if row is None:
            raise LookupError(
                f"no recorded answer of {model_id!r} for this prompt (not a query of {self._ds.name!r})"
            )
        answer = str(self._ds.answers[row, col])
        tokens_in, tokens_out = usage_for_cost(arm, float(self._ds.cost_usd[row, col]), answer)
        return ReplayAnswer(answer, tokens_in, tokens_out, text)


def usage_for_cost(arm: Arm, cost_usd: float, answer: str) -> tuple[int, int]:
    """(prompt tokens, completion tokens) whose price under ``arm`` is ``cost_usd``, as near
    as whole tokens allow; completion tokens are the answer's words (at least 1)."""
    tokens_out = max(1, len(answer.split()))
    rest = cost_usd - arm.price_per_call_usd - tokens_out * arm.price_per_1k_output_usd / 1000
    if arm.price_per_1k_input_usd <= 0:
        return 0, tokens_out
    return max(0, round(rest * 1000 / arm.price_per_1k_input_usd)), tokens_out


@dataclass(frozen=True)
class Faults:
    """Injected behaviour: latency ~ Normal(mean, sd) ms (≥ 0); errors with probability rate."""

    latency_ms: float = 0.0
    latency_sd_ms: float = 0.0
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.latency_sd_ms < 0:
            raise ConfigError("replay latency must be ≥ 0 ms")
        if not 0 <= self.error_rate <= 1:
            raise ConfigError(f"replay error rate {self.error_rate} must be in [0, 1]")


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) resets connections under a burst of concurrent calls.
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it timed out, say) is not the server's error: one line at
        debug level, not the default traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("client %s hung up: %s", client_address, exc)
        else:
            super().handle_error(request, client_address)


class ReplayServer:
    """Serves a ReplayBook over HTTP on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self, book: ReplayBook, faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.book = book
        self.faults = faults or Faults()
        self._rng = np.random.default_rng(self.faults.seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.answers: Counter[str] = Counter()  # successful answers per recorded query text
        self.unknown_answers = 0
        self._httpd = _Server((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ReplayServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="replay-llm", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        """Replace the injected faults with ``changes`` applied (keys: latency_ms,
        latency_sd_ms, error_rate); raises ConfigError on an unknown key or a bad value."""
        allowed = {"latency_ms", "latency_sd_ms", "error_rate"}
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigError(f"unknown fault(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            values = {k: float(v) for k, v in changes.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"faults must be numbers, got {changes!r}") from None
        with self._lock:
            self.faults = replace(self.faults, **values)  # type: ignore[arg-type]
            return self.faults

    def record(self, answer: ReplayAnswer) -> None:
        """Count one successful answer (sent with HTTP 200)."""
        with self._lock:
            if answer.query is None:
                self.unknown_answers += 1
            else:
                self.answers[answer.query] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "unknown": self.unknown_answers,
                "answers": dict(self.answers),
                "faults": asdict(self.faults),
            }

    def draw(self) -> tuple[float, bool]:
        """(seconds to wait, whether to fail) for one request."""
        f = self.faults
        with self._lock:
            self.requests += 1
            delay = (
                max(0.0, self._rng.normal(f.latency_ms, f.latency_sd_ms)) / 1000
                if f.latency_ms
                else 0.0
            )
            fail = bool(f.error_rate and self._rng.random() < f.error_rate)
            self.errors += fail
        return delay, fail


def _handler_for(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("replay: " + format, *args)

        def _send(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"status": "ok", "models": server.book.model_ids})
            elif self.path == "/admin/stats":
                self._send(200, server.stats())
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(
                    400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
                )
                return
            if self.path == "/admin/faults":
                self._admin_faults(body)
            elif self.path.rstrip("/") == "/v1/chat/completions":
                self._openai(body)
            elif self.path.startswith("/model/") and self.path.endswith("/converse"):
                self._bedrock(unquote(self.path[len("/model/") : -len("/converse")]), body)
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def _admin_faults(self, body: Any) -> None:
            try:
                if not isinstance(body, dict):
                    raise ConfigError("the body must be a JSON object of faults")
                faults = server.set_faults(body)
            except ConfigError as exc:
                self._send(400, {"error": {"message": str(exc)}})
                return
            log.info("replay faults now %s", faults)
            self._send(200, asdict(faults))

        def _openai(self, body: dict[str, Any]) -> None:
            delay, fail = server.draw()
            time.sleep(delay)
            if fail:
                self._send(503, {"error": {"message": "injected failure", "type": "server_error"}})
                return
            messages = body.get("messages") or []
            prompt = str(messages[-1].get("content", "")) if messages else ""
            try:
                ans = server.book.answer(str(body.get("model", "")), prompt)
            except LookupError as exc:
                self._send(404, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            server.record(ans)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ans.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": ans.tokens_in,
                        "completion_tokens": ans.tokens_out,
                        "total_tokens": ans.tokens_in + ans.tokens_out,
                    },
                },
            )

        def _bedrock(self, model_id: str, body: dict[str, Any]) -> None:
            delay, fail = server.draw()
            time.sleep(delay)
            if fail:
                self._send(
                    503,
                    {"__type": "ServiceUnavailableException", "message": "injected failure"},
                    {"x-amzn-ErrorType": "ServiceUnavailableException"},
                )
                return
            messages = body.get("messages") or []
            blocks = messages[-1].get("content", []) if messages else []
            prompt = "".join(b.get("text", "") for b in blocks)
            try:
                ans = server.book.answer(model_id, prompt)
            except LookupError as exc:
                self._send(
                    404,
                    {"__type": "ResourceNotFoundException", "message": str(exc)},
                    {"x-amzn-ErrorType": "ResourceNotFoundException"},
                )
                return
            server.record(ans)
            self._send(
                200,
                {
                    "output": {"message": {"role": "assistant", "content": [{"text": ans.text}]}},
                    "stopReason": "end_turn",
                    "usage": {
                        "inputTokens": ans.tokens_in,
                        "outputTokens": ans.tokens_out,
                        "totalTokens": ans.tokens_in + ans.tokens_out,
                    },
                    "metrics": {"latencyMs": int(delay * 1000)},
                },
            )

    return Handler
