"""AWS Bedrock Runtime's Converse API through boto3 (run in a thread: boto3 is blocking)."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from workers.service.providers.base import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    Completion,
    ProviderError,
    kind_for_status,
)

_RETRYABLE_CODES = {
    "ThrottlingException": "rate_limit",
    "ModelTimeoutException": "timeout",
    "InternalServerException": "server",
    "ServiceUnavailableException": "server",
    "ModelNotReadyException": "server",
}


class BedrockProvider:
    """Credentials are always explicit (never the instance metadata service)."""

    name = "bedrock"

    def __init__(
        self,
        model_id: str,
        *,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        endpoint_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = 10,
    ) -> None:
        if not (access_key_id and secret_access_key):
            raise ProviderError(
                "the bedrock provider needs AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (any values for a local server)",
                "client",
            )
        self.model_id = model_id
        self._client: Any = boto3.client(
            "bedrock-runtime",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1, "mode": "standard"},  # metallm retries itself
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                max_pool_connections=max_connections,
            ),
        )

    def _converse(self, prompt: str, max_tokens: int) -> Completion:
        try:
            resp = self._client.converse(
                modelId=self.model_id,
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": max_tokens, "temperature": 0},
            )
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            kind = _RETRYABLE_CODES.get(code) or (kind_for_status(status) if status else "client")
            raise ProviderError(
                f"bedrock {self.model_id}: {code or 'error'} (HTTP {status}): {err.get('Message', '')}",
                kind,
                status or None,
            ) from exc
        except (
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
        ) as exc:
            raise ProviderError(f"bedrock {self.model_id}: timed out: {exc}", "timeout") from exc
        except botocore.exceptions.EndpointConnectionError as exc:
            raise ProviderError(
                f"bedrock {self.model_id}: cannot connect: {exc}", "connection"
            ) from exc
        blocks = resp.get("output", {}).get("message", {}).get("content", [])
        text = "".join(b.get("text", "") for b in blocks)
        usage = resp.get("usage", {})
        return Completion(
            text, usage.get("inputTokens", 0), usage.get("outputTokens", 0), self.model_id
        )

    async def complete(self, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Completion:
        return await asyncio.to_thread(self._converse, prompt, max_tokens)

    async def close(self) -> None:
        self._client.close()
