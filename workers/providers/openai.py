"""OpenAI chat completions through the official ``openai`` async client."""

from __future__ import annotations

import openai

from workers.providers.base import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    Completion,
    ProviderError,
    kind_for_status,
)


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
    ) -> None:
        if not api_key:
            raise ProviderError(
                "the openai provider needs an API key: set OPENAI_API_KEY (any value for a local server)",
                "client",
            )
        self.model_id = model_id
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    async def complete(self, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Completion:
        try:
            resp = await self._client.chat.completions.create(
                model=self.model_id,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0,
            )
        except openai.APITimeoutError as exc:
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
