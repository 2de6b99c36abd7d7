"""Assembling and running the workers: router, learner, or both in one process (serve).

SIGHUP reloads the ``--config`` file: arms added, retired and re-priced are applied
without a restart (workers/service/reload.py).

Shutdown is in two stages: the first SIGTERM/SIGINT stops reading, lets the batch in
flight finish and be acknowledged, and saves the model; a second one exits at once.

A worker outlives Redis outages: each role's loop runs under ``Service._supervise``, which
on a connection error waits for the ``RedisLink`` to reconnect and runs the loop again
(the router and the learner keep their state in memory across the restart). Only a Redis
that never answered at start-up stops the process, as a configuration error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from bandit.config import RoutingConfig
from bandit.embedder import EMBEDDING_DIM
from bandit.policy import Policy
from bandit.training import TrainingData, train_full_information
from workers.service.drift_watch import DriftWatch
from workers.service.embedding import router_embedder
from workers.service.evaluation import LiveEvaluation, ope_config
from workers.service.floors import LearnerFloors
from workers.service.health import HEARTBEAT_EVERY_S, HealthServer, HealthState
from workers.service.learner import Learner, newest_snapshot, save_snapshot
from workers.service.metrics import Metrics
from workers.service.migration import conform
from workers.service.model_start import starting_policy
from workers.service.pacing import BudgetSettings, Pacer, PaceReader, budget_settings
from workers.service.providers import build_providers
from workers.service.reconnect import (
    REDIS_OUTAGE,
    RedisLink,
    RedisUnreachableError,
    check_redis_url,
    connect,
    redacted,
    unreachable,
)
from workers.service.reload import ConfigReload
from workers.service.retry import compute_backoff
from workers.service.router import Router
from workers.service.settings import Keys, ServiceSettings

log = logging.getLogger(__name__)
ROLES = ("router", "learner")
# Replies of a read whose consumer group (or stream) is gone.
GROUP_GONE = ("NOGROUP", "UNBLOCKED")


def fresh_policy(config: RoutingConfig) -> Policy:
    return Policy(config.policy, config.arms.names, config.arms.normalised_costs(), EMBEDDING_DIM)


def warm_started_policy(config: RoutingConfig, vectors: np.ndarray, texts: Sequence[str],
                        correct: np.ndarray, cost: np.ndarray) -> Policy:  # fmt: skip
    """A policy trained with full information on recorded outcomes (rows × arms, in the
    catalogue's arm order)."""
    policy = fresh_policy(config)
    shared = policy.features.shared_batch(vectors, list(texts))
    return train_full_information(
        policy, TrainingData(shared, correct, cost, cost), config.policy.seed
    )


@dataclass
class Service:
    settings: ServiceSettings
    config: RoutingConfig
    roles: tuple[str, ...] = ROLES
    initial_policy: Policy | None = None
    initial_name: str = "the given model"  # how the start-up log names initial_policy
    # The provider settings of the environment (OPENAI_*, AWS_*, METALLM_REPLAY_URL, …),
    # read by the caller at its edge.
    env: Mapping[str, str] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    router: Router | None = None
    learner: Learner | None = None
    pacer: Pacer | None = None  # the deployment's budget controller, run beside the learner
    health: HealthState = field(default_factory=HealthState)
    http: HealthServer | None = None
    # Called with an arm's name when the learner detects that arm drifted (after its warning
    # and metrics), besides raising that arm's exploration floor.
    on_drift: Callable[[str], None] | None = None
    config_path: str | None = None  # the --config file SIGHUP reloads (None: built in)

    def __post_init__(self) -> None:
        self.reloader = ConfigReload(self)

    async def start(self) -> None:
        """Metrics and probes first (unready until a model is held), then Redis and the model.
        A Redis that does not answer here is a configuration error (RedisUnreachableError)."""
        s = self.settings
        check_redis_url(s.redis_url)  # before the probes hold a client on it
        # A budget in paper mode is refused here, before anything starts.
        self.budget: BudgetSettings | None = budget_settings(s, self.config)
        self.metrics = Metrics(self.registry)
        per_hour = self.budget.pacing.usd_per_hour if self.budget else None
        self.metrics.budget.set(per_hour or 0.0)
        self.metrics.budget_p.set(
            self.budget.pacing.p_init if self.budget else self.config.policy.p
        )
        self.metrics.accuracy_floor.set(s.accuracy_floor)
        if s.metrics_port:
            self.http = HealthServer(
                s.metrics_port, self.registry, s.redis_url, self.health
            ).start()
        try:
            self.redis = await connect(s.redis_url, s.block_ms)
        except BaseException:
            self._stop_http()
            raise
        self.link = RedisLink(self.redis, s.redis_url, self.health, self.metrics,
                              s.reconnect_base_s, s.reconnect_cap_s, s.shutdown_deadline_s)  # fmt: skip
        try:
            await self._start_roles()
        except REDIS_OUTAGE as exc:
            await self.close()
            raise unreachable(s.redis_url, exc) from None
        except BaseException:
            await self.close()
            raise

    async def _start_roles(self) -> None:
        s = self.settings
        deployed = await newest_snapshot(self.redis, Keys(s.prefix), s.model_dir)
        policy = starting_policy(deployed, self.initial_policy, self.initial_name,
                                 fresh_policy(self.config), "+".join(self.roles))  # fmt: skip
        # The deployment's own snapshot follows the config's arms; arms it lacks are new.
        added = [n for n in self.config.arms.names if n not in policy.arm_names]
        policy = conform(policy, self.config.arms, "the newest snapshot")
        if "learner" in self.roles:
            # Online updates are one pass with importance weights: they take the online rate.
            online = policy.config.for_online()
            learner_policy = policy if online == policy.config else policy.with_config(online)
            ope = LiveEvaluation(ope_config(self.config.arms), self.config.arms.normalised_costs(),
                                 self.redis, s.prefix)  # fmt: skip
            floors = LearnerFloors(s.floor_config(), self.config.arms.names, self.redis,
                                   Keys(s.prefix), self.metrics)  # fmt: skip
            await floors.restore(added)
            drift = DriftWatch(self.config.drift, self.metrics, self.redis, s.prefix,
                               partial(self._drifted, floors))  # fmt: skip
            self.learner = Learner(s, learner_policy, self.redis, self.metrics, ope, drift, floors)
            self.metrics.init_learner(self.config.arms.names)
            await self.learner.publish()
            if self.budget:
                self.pacer = Pacer(self.redis, Keys(s.prefix), self.budget,
                                   self.config.arms.fixed_costs_usd(), self.metrics)  # fmt: skip
                await self.pacer.start()
        if "router" in self.roles:
            router_policy = Policy.from_bytes(policy.to_bytes()) if self.learner else policy
            providers = build_providers(self.config.arms, self.env)
            embedder = router_embedder(
                self.config.embedder, in_process=not s.embedder_process, threads=s.embedder_threads
            )
            pace = PaceReader(self.redis, Keys(s.prefix), self.config.policy.p, self.budget,
                              self.metrics)  # fmt: skip
            self.router = Router(s, self.config, router_policy, embedder, providers, self.redis,
                                 self.metrics, link=self.link, pace=pace)  # fmt: skip
            await embedder.start()  # the model is loaded before the router says it is ready
            self.metrics.init_router(self.config.arms.names)
            if not self.learner:
                await self.router.note_published()
        self.health.model_version = self._model_version

    def _drifted(self, floors: LearnerFloors, arm: str) -> None:
        """A drifted arm is re-learned: its exploration floor is raised (bandit.drift's
        boost share, for its next boost labels), then ``on_drift`` is called."""
        drift = self.config.drift
        floors.boost(arm, drift.boost_share, drift.boost_labels)
        if self.on_drift is not None:
            self.on_drift(arm)

    def _model_version(self) -> int | None:
        """The version of the model the worker routes (router) or learns (learner) with."""
        worker = self.router or self.learner
        return worker.policy.version if worker else None

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.health.beat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def _deadline_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.link.stopping()

    async def _supervise(
        self, role: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run a role's loop until it returns (on stop); after a Redis outage, wait until
        Redis is back and run it again: the loop makes its consumer group again if Redis
        lost it, and picks up the work it held. Raises RedisUnreachableError when Redis is
        still gone ``shutdown_deadline_s`` after a stop."""
        no_group = 0
        while True:
            generation = self.link.generation
            try:
                await run(stop)
                return
            except REDIS_OUTAGE as exc:
                self.link.lost(exc, generation)
                if not await self.link.wait_back():
                    self._save_on_give_up(role)
                    raise RedisUnreachableError(
                        f"{role}: Redis at {redacted(self.settings.redis_url)} still unreachable "
                        f"{self.settings.shutdown_deadline_s:g} s after the stop signal; work not written "
                        "stays pending for another worker"
                    ) from None
                log.info("%s resumes", role)
            except ResponseError as exc:
                if not str(exc).startswith(GROUP_GONE):
                    raise
                # Redis came back without its data (no persistence), or the stream was
                # deleted under a blocked read: the loop makes the group again; the backoff
                # keeps a persistent fault from spinning.
                no_group += 1
                log.warning("%s: consumer group gone (%s); making it again", role, exc)
                s = self.settings
                await asyncio.sleep(
                    compute_backoff(no_group, s.reconnect_base_s, s.reconnect_cap_s)
                )

    def _save_on_give_up(self, role: str) -> None:
        """The learner's model cannot reach Redis: keep it on disk at least."""
        if role == "learner" and self.learner and self.settings.model_dir:
            save_snapshot(Path(self.settings.model_dir), self.learner.policy.to_bytes())
            log.warning("saved model version %d to %s only", self.learner.policy.version,
                        self.settings.model_dir)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        if self.router:
            tasks.append(asyncio.create_task(self._supervise("router", self.router.run, stop),
                                             name="router"))  # fmt: skip
        if self.learner:
            tasks.append(asyncio.create_task(self._supervise("learner", self.learner.run, stop),
                                             name="learner"))  # fmt: skip
        if self.pacer:
            tasks.append(asyncio.create_task(self._supervise("pacer", self.pacer.run, stop),
                                             name="pacer"))  # fmt: skip
        helpers = [asyncio.create_task(self._heartbeat(stop), name="heartbeat"),
                   asyncio.create_task(self._deadline_on_stop(stop), name="stop-deadline"),
                   asyncio.create_task(self.reloader.run(stop), name="config-reload")]  # fmt: skip
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            stop.set()
            self.link.stopping()  # the roles still running wait for Redis this long at most
            for h in helpers:
                h.cancel()
            await asyncio.gather(*tasks, *helpers, return_exceptions=True)

    def _stop_http(self) -> None:
        if self.http:
            self.http.stop()
            self.http = None

    async def close(self) -> None:
        if self.router:
            await self.router.dispatcher.close()
            await self.router.embedder.close()
        self._stop_http()
        await self.link.close()
        await self.redis.aclose()


def install_signal_handlers(stop: asyncio.Event, reload: Callable[[], None] | None = None) -> None:
    """First SIGTERM/SIGINT: warm stop (finish the batch, ack, save). Second: exit now.
    SIGHUP: ``reload`` (re-read the config file)."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal %d: exiting at once", signum)
            os._exit(1)
        log.info("signal %d: finishing the batch in flight, then stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)


async def run_service(service: Service) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop, service.reloader.request)
    await service.start()
    try:
        await service.run(stop)
    finally:
        await service.close()
