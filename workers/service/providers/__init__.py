"""LLM providers by name; ``build_providers`` makes one per arm of a catalogue."""

from __future__ import annotations

from collections.abc import Mapping

from bandit.arms import ArmCatalogue
from bandit.errors import ConfigError
from workers.service.providers.base import Completion, Provider, ProviderError
from workers.service.providers.bedrock import BedrockProvider
from workers.service.providers.openai import TRANSPORTS, OpenAIProvider

REPLAY_URL_ENV = "METALLM_REPLAY_URL"
TRANSPORT_ENV = "METALLM_OPENAI_TRANSPORT"


def build_providers(catalogue: ArmCatalogue, env: Mapping[str, str]) -> dict[str, Provider]:
    """One provider per arm, configured from the arm (model id, endpoint) and ``env``:
    OPENAI_API_KEY / OPENAI_BASE_URL; AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN; METALLM_REPLAY_URL for replay arms without an endpoint; and
    METALLM_OPENAI_TRANSPORT (aiohttp, the default, or httpx) for the openai client."""
    out: dict[str, Provider] = {}
    transport = env.get(TRANSPORT_ENV) or "aiohttp"
    if transport not in TRANSPORTS:
        raise ConfigError(f"{TRANSPORT_ENV}={transport} must be one of {', '.join(TRANSPORTS)}")
    for arm in catalogue.arms:
        if arm.provider == "openai":
            out[arm.name] = OpenAIProvider(
                arm.model_id,
                api_key=env.get("OPENAI_API_KEY", ""),
                base_url=arm.endpoint or env.get("OPENAI_BASE_URL") or None,
                transport=transport,
            )
        elif arm.provider == "bedrock":
            out[arm.name] = BedrockProvider(
                arm.model_id,
                region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                access_key_id=env.get("AWS_ACCESS_KEY_ID", ""),
                secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
                session_token=env.get("AWS_SESSION_TOKEN") or None,
                endpoint_url=arm.endpoint or None,
            )
        else:  # replay: the local stand-in speaks the OpenAI protocol
            url = arm.endpoint or env.get(REPLAY_URL_ENV)
            if not url:
                raise ConfigError(
                    f"arm {arm.name!r} is a replay arm but has no endpoint: set {REPLAY_URL_ENV} "
                    "to the replay server (metallm replay-llm), e.g. http://127.0.0.1:8089"
                )
            out[arm.name] = OpenAIProvider(
                arm.model_id,
                api_key="replay",
                base_url=url.rstrip("/") + "/v1",
                transport=transport,
            )
    return out


__all__ = [
    "BedrockProvider",
    "Completion",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "build_providers",
]
