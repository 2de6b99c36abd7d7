"""A run's keys go when it ends (benchmarks, fault-injection rows), and no one else's."""

import uuid

import pytest
import redis

from workers.harness.cleanup import delete_prefix


def test_delete_prefix_removes_only_the_runs_keys(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    mine, other = f"bench-{uuid.uuid4().hex[:8]}:", f"keep-{uuid.uuid4().hex[:8]}:"
    for i in range(1203):  # more than two DEL batches
        r.set(f"{mine}k{i}", i)
    r.xadd(f"{mine}stream", {"a": 1})
    r.set(f"{other}k", 1)
    try:
        assert delete_prefix(r, mine) == 1204
        assert list(r.scan_iter(match=f"{mine}*")) == []
        assert r.get(f"{other}k") == b"1"
        with pytest.raises(ValueError):
            delete_prefix(r, "")
    finally:
        r.delete(f"{other}k")
