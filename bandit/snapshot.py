"""The byte format of a policy snapshot: what the learner publishes and routers load.

    SNAPSHOT_MAGIC | header length (4 bytes, big-endian) | header (JSON) | VW model bytes

The header holds what a Policy needs besides the weights (config, arm names, costs,
embedding dimension, updates); ``Policy.to_bytes`` / ``Policy.from_bytes`` fill and read it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from bandit.errors import PolicyError

SNAPSHOT_MAGIC = b"METALLM-POLICY/1\n"
_SIZE = struct.Struct(">I")


@dataclass(frozen=True)
class Snapshot:
    """A parsed snapshot: ``header`` (the JSON object) and ``model`` (VW's saved model)."""

    header: dict[str, Any]
    model: bytes

    @classmethod
    def parse(cls, data: bytes) -> Snapshot:
        if not data.startswith(SNAPSHOT_MAGIC):
            raise PolicyError("not a metallm policy snapshot (bad magic bytes)")
        offset = len(SNAPSHOT_MAGIC)
        if len(data) < offset + _SIZE.size:
            raise PolicyError(f"policy snapshot is truncated: {len(data)} bytes")
        (size,) = _SIZE.unpack_from(data, offset)
        start = offset + _SIZE.size
        try:
            header = json.loads(data[start : start + size])
        except ValueError as exc:
            raise PolicyError(f"policy snapshot header is corrupt: {exc}") from exc
        if not isinstance(header, dict):
            raise PolicyError(f"policy snapshot header is a {type(header).__name__}, not an object")
        return cls(header, data[start + size :])

    def to_bytes(self) -> bytes:
        header = json.dumps(self.header).encode()
        return SNAPSHOT_MAGIC + _SIZE.pack(len(header)) + header + self.model
