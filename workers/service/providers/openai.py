"""OpenAI chat completions through the official ``openai`` async client.

The client runs on its aiohttp transport (``openai.DefaultAioHttpClient``, the
``openai[aiohttp]`` extra) rather than its default httpx one: httpx's connection pool checks
every open connection on each request and each release, so with a router's hundreds of
calls in flight the client cost 3.3 CPU ms per call against 1.7 on aiohttp (64 in flight;
4.4 against 2.1 at 256), on the same core as the router's event loop
(``scripts/bench_service.py`` prints the client's cost alone). ``transport = "httpx"``
(``METALLM_OPENAI_TRANSPORT``) goes back to the client's default transport.

Each call is the client's ``post`` to ``/chat/completions``, parsed into its typed
``ChatCompletion``: the same request, retries, errors and response model as
``chat.completions.create``, without its transform of the params (0.74 against 0.96 CPU ms
per call over three alternating runs of 3,000 calls at 64 in flight, a /tmp script).
"""

from __future__ import annotations

import openai
from openai.types.chat import ChatCompletion

from workers.service.providers.base import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    Completion,
    ProviderError,
    kind_for_status,
)

TRANSPORTS = ("aiohttp", "httpx")


class OpenAIProvider:
    """``base_url`` None means api.openai.com; metallm retries itself, so the client does not."""

    name = "openai"

    def __init__(
        self,
        model_id: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: str = "aiohttp",
    ) -> None:
        if not api_key:
            raise ProviderError(
                "the openai provider needs an API key: set OPENAI_API_KEY (any value for a local server)",
                "client",
            )
        if transport not in TRANSPORTS:
            raise ProviderError(
                f"openai transport {transport!r} must be one of {', '.join(TRANSPORTS)}", "client"
            )
        self.model_id = model_id
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s)
            if transport == "aiohttp"
            else None,
        )

    async def complete(self, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Completion:
        try:
            # The client's own POST (its documented way to make custom requests) rather
            # than chat.completions.create, whose recursive transform of the params costs
            # a fifth of the client's CPU per call; this body is plain JSON already.
            resp = await self._client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                body={
                    "model": self.model_id,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            )
        except openai.APITimeoutError as exc:
            if _refused(exc):  # the aiohttp transport reports a refused connect as a timeout
                raise ProviderError(
                    f"openai {self.model_id}: cannot connect: {exc.__cause__}", "connection"
                ) from exc
            raise ProviderError(f"openai {self.model_id}: timed out: {exc}", "timeout") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(
                f"openai {self.model_id}: cannot connect: {exc}", "connection"
            ) from exc
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"openai {self.model_id}: HTTP {exc.status_code}: {exc.message}",
                kind_for_status(exc.status_code),
                exc.status_code,
            ) from exc
        if not resp.choices:
            raise ProviderError(f"openai {self.model_id}: the response has no choices", "server")
        usage = resp.usage
        return Completion(
            text=resp.choices[0].message.content or "",
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            model=resp.model,
        )

    async def close(self) -> None:
        await self._client.close()


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused or reset somewhere down ``exc``'s causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
