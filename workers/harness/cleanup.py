"""Deleting a run's keys: benchmarks and fault-injection rows use a private key prefix and
leave nothing behind in the Redis they ran against."""

from __future__ import annotations

import redis


def delete_prefix(r: redis.Redis, prefix: str) -> int:
    """Delete every key that starts with ``prefix`` (SCAN, 500 keys per DEL); the count."""
    if not prefix:
        raise ValueError("refusing to delete every key: the prefix is empty")
    batch: list[bytes] = []
    deleted = 0
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(r.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(r.delete(*batch))
    return deleted
