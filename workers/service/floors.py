"""Exploration floors in the live service: the learner keeps them, the routers apply them.

The learner holds one ``bandit.floors.ArmFloors``: an arm added to the config (at start
against the snapshot's arms, or on a config reload) gets a floor; each label of that arm
counts against it (``labelled``). The state is committed in the learner's commit
transaction with the model and the learned markers (so a restarted learner neither loses
nor counts twice a label), together with the hash ``{prefix}explore_floor`` (arm name →
least probability) that every router reads once per batch (``FloorReader``) and passes to
``Policy.decide_lines(floor=...)``: the pmf an arm is drawn from, and logged with, holds
the floor. A floor thus reaches the routers at the learner's next commit (every
``snapshot_every_s`` seconds or ``snapshot_every_updates`` labels).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bandit.errors import ConfigError
from bandit.floors import MAX_TOTAL_FLOOR, ArmFloors, FloorConfig
from workers.service.metrics import Metrics
from workers.service.settings import Keys

log = logging.getLogger(__name__)


class Floors:
    """No exploration floors: the learner's hooks, doing nothing."""

    def labelled(self, record: Mapping[str, str]) -> None:
        """One label of the arm a decision record names was learned."""

    def queue_commit(self, pipe: Any) -> None:
        """Add the floors to the learner's commit transaction ``pipe``."""


FLOORS_OFF = Floors()


class LearnerFloors(Floors):
    """The learner's floors (see the module docstring)."""

    def __init__(self, config: FloorConfig, arm_names: Sequence[str], redis: aioredis.Redis,
                 keys: Keys, metrics: Metrics) -> None:  # fmt: skip
        self.state = ArmFloors(config, arm_names)
        self.r, self.keys, self.m = redis, keys, metrics

    async def restore(self, added: Sequence[str] = ()) -> None:
        """Go on from the committed floors (of the arms still in the config), then give a
        floor to each arm in ``added`` (new against the snapshot the learner starts from)."""
        raw: Any = await self.r.get(self.keys.explore_floor_state)
        if raw is not None:
            try:
                saved = ArmFloors.from_dict(self.state.config, json.loads(raw))
            except (ValueError, ConfigError) as exc:
                log.warning("exploration floors start afresh: %s", exc)
            else:
                saved.set_arms(self.state.arm_names)
                self.state.active = saved.active
        self.set_arms(self.state.arm_names, added)

    def set_arms(self, arm_names: Sequence[str], added: Sequence[str] = ()) -> None:
        """Follow the config's arms; ``added`` get a floor (unless floors are off)."""
        self.state.set_arms(arm_names)
        for name in added:
            if self.state.config.share > 0:
                self.state.added(name)
                log.info("arm %s is new: at least %.3g of the decisions until %d labels%s", name,
                         self.state.config.share, self.state.config.labels,
                         f" or {self.state.config.max_spend_usd:g} USD" if self.state.config.max_spend_usd else "")  # fmt: skip

    def boost(self, arm: str, share: float, labels: int) -> None:
        """A raised share for ``arm``'s next ``labels`` labels (a drifted arm to re-learn)."""
        try:
            self.state.boost(arm, share, labels)
        except ConfigError as exc:  # never stop the learner for it
            log.warning("arm %s: exploration floor not raised: %s", arm, exc)
            return
        log.info("arm %s: exploration floor %.3g for its next %d labels", arm, share, labels)

    def labelled(self, record: Mapping[str, str]) -> None:
        name = record.get("arm_name", "")
        if name in self.state.active and self.state.labelled(
            name, float(record.get("cost_usd") or 0.0)
        ):
            log.info("arm %s: exploration floor ended", name)

    def floors(self) -> dict[str, float]:
        return self.state.by_name()

    def queue_commit(self, pipe: Any) -> None:
        """The routers' hash and the state, in the learner's commit transaction."""
        floors = self.floors()
        pipe.delete(self.keys.explore_floor)
        if floors:
            pipe.hset(self.keys.explore_floor, mapping={n: repr(f) for n, f in floors.items()})
        pipe.set(self.keys.explore_floor_state, json.dumps(self.state.to_dict()))
        for name in self.state.arm_names:
            self.m.explore_floor.labels(name).set(floors.get(name, 0.0))


class FloorReader:
    """The router's side: each arm's floor for the batch about to be decided, read from the
    hash once per batch. A Redis error keeps the floors last read."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r, self.keys = r, keys
        self.by_name: dict[str, float] = {}

    async def current(self, arm_names: Sequence[str]) -> np.ndarray | None:
        """Shape (n_arms,) in ``arm_names`` order, or None when no arm has a floor."""
        try:
            raw: Any = await self.r.hgetall(self.keys.explore_floor)
        except (RedisError, OSError) as exc:
            log.warning("could not read the exploration floors (%s); keeping the last", exc)
            raw = None
        if raw is not None:
            self.by_name = {}
            for k, v in raw.items():
                try:
                    share = float(v)
                except ValueError:
                    continue
                if 0 < share < 1:
                    self.by_name[k.decode() if isinstance(k, bytes) else str(k)] = share
        floor = np.array([self.by_name.get(n, 0.0) for n in arm_names])
        if not floor.any():
            return None
        total = floor.sum()
        return floor * (MAX_TOTAL_FLOOR / total) if total > MAX_TOTAL_FLOOR else floor
