"""What every LLM provider offers: ``complete(prompt) -> Completion`` with token usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bandit.errors import MetalLMError

# Kinds of provider failure, as metrics and dead letters name them.
ERROR_KINDS = ("timeout", "rate_limit", "server", "connection", "client")
RETRYABLE_KINDS = frozenset({"timeout", "rate_limit", "server", "connection"})
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_TOKENS = 16  # classification answers are a word or a letter


@dataclass(frozen=True)
class Completion:
    """One answer: the raw text and the token usage the API reported."""

    text: str
    tokens_in: int
    tokens_out: int
    model: str


class ProviderError(MetalLMError):
    """A call failed; ``kind`` is one of ERROR_KINDS and says whether a retry may help."""

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind if kind in ERROR_KINDS else "client"
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


class Provider(Protocol):
    """An LLM API. ``complete`` raises ProviderError on failure, never anything else."""

    name: str

    async def complete(
        self, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> Completion: ...

    async def close(self) -> None: ...


def kind_for_status(status: int) -> str:
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server"
    return "client"
