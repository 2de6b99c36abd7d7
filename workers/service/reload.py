"""Reloading the config file without a restart (SIGHUP): new, retired and re-priced arms.

``ConfigReload.reload`` reads the ``--config`` file again and validates all of it before
anything changes (a file that does not parse, an arm without a provider, a replay arm
without an endpoint …): a bad file is logged and the running config kept. What a reload
applies is the ``[[arms]]`` list and prices; ``[task]``, ``[policy]``, ``[embedder]``,
``[service]``, ``[budget]`` and ``[drift]`` need a restart, and a change there is logged and ignored.

- The learner, between two steps: commits what it holds, migrates its policy
  (``Policy.with_arms``, one log line naming added, removed and re-priced arms with their
  normalised costs old → new), gives each added arm its exploration floor, restarts the
  off-policy estimates when the arm set changed (they continue, re-priced, when only
  prices did), hands the new USD prices to the budget pacer, and commits again: the
  migrated model and the floors reach the routers with that commit.
- A router, between two batches and once the calls of the batches it decided are back
  (they finish under the arms they were drawn from): migrates its policy the same way and
  routes through new providers (kept arms keep theirs, and their circuit breakers).

A config from ``--dataset`` is built in: there is nothing to reload (logged).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from bandit.arms import Arm
from bandit.config import RoutingConfig, load_config
from bandit.errors import MetalLMError
from workers.service.breaker import Breakers
from workers.service.dispatch import build_dispatcher
from workers.service.evaluation import LiveEvaluation, ope_config
from workers.service.floors import LearnerFloors
from workers.service.migration import arm_change, conform
from workers.service.pacing import budget_settings
from workers.service.providers import Provider, build_providers

if TYPE_CHECKING:
    from workers.service.app import Service
    from workers.service.learner import Learner
    from workers.service.router import Router

log = logging.getLogger(__name__)
RESTART_SECTIONS = ("task", "policy", "embedder", "service", "budget", "drift")


def _endpoint(arm: Arm) -> tuple[str, str, str | None]:
    """What a provider is built from: a change here needs a new provider."""
    return arm.provider, arm.model_id, arm.endpoint


class ConfigReload:
    """The config reload of one worker process (see the module docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.wanted = asyncio.Event()
        self._new_providers: dict[str, Provider] = {}  # built by ``validated``

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler); it runs in ``run``'s task."""
        self.wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.wanted.wait()
            self.wanted.clear()
            if stop.is_set():
                return
            try:
                await self.reload()
            except Exception:  # Redis lost mid-way, …: the worker runs on; SIGHUP again
                log.exception("config reload failed before it was complete; send SIGHUP again")
                self.service.metrics.config_reloads.labels("refused").inc()

    async def reload(self) -> bool:
        """Re-read, validate and apply the config file; False when nothing was applied."""
        svc = self.service
        path = svc.config_path
        if not path:
            log.info("config reload asked for: the config is the built-in one of --dataset, "
                     "nothing to reload (run with --config FILE to change arms live)")  # fmt: skip
            return False
        try:
            new = self.validated(load_config(path))
        except MetalLMError as exc:
            log.error("config %s not reloaded, the running config is kept: %s", path, exc)
            svc.metrics.config_reloads.labels("refused").inc()
            return False
        if new.arms == svc.config.arms:
            for provider in self._new_providers.values():
                await provider.close()
            self._new_providers = {}
            log.info("config %s reloaded: the arms and their prices are unchanged", path)
            svc.metrics.config_reloads.labels("applied").inc()
            return True
        change = arm_change(svc.config.arms.names, svc.config.arms.normalised_costs(),
                            new.arms.names, new.arms.normalised_costs())  # fmt: skip
        log.warning("config %s reloaded: %s", path,
                    change or "providers, prompts or USD prices changed")  # fmt: skip
        if svc.learner is not None:
            await self.apply_learner(svc.learner, new)
        if svc.router is not None:
            await self.apply_router(svc.router, new)
        svc.config = new
        svc.metrics.config_reloads.labels("applied").inc()
        return True

    def validated(self, new: RoutingConfig) -> RoutingConfig:
        """The running config with the new file's arms; MetalLMError when the file cannot
        be run. Sections that need a restart keep their running values (logged)."""
        svc, old = self.service, self.service.config
        for section in RESTART_SECTIONS:
            before, after = getattr(old, section), getattr(new, section)
            if section == "embedder":  # the cache folders come from the options, not the file
                after = dataclasses.replace(after, cache_dir=before.cache_dir,
                                            onnx_dir=after.onnx_dir or before.onnx_dir)  # fmt: skip
            if before != after:
                log.warning("config reload: [%s] changed; that needs a restart, the running "
                            "values are kept", section)  # fmt: skip
        merged = dataclasses.replace(old, arms=new.arms)
        budget_settings(svc.settings, merged)  # the new prices against the budget's rules
        if svc.router is not None:  # every arm must have a usable provider
            self._new_providers = build_providers(new.arms, svc.env)
        return merged

    def _kept(self, arm: Arm) -> bool:
        """Whether the running router has a provider for this arm as it is configured."""
        old = self.service.config.arms
        return arm.name in old.names and _endpoint(old.arm(arm.name)) == _endpoint(arm)

    async def apply_learner(self, learner: Learner, new: RoutingConfig) -> None:
        svc = self.service
        async with learner.busy:
            await learner.publish(model=learner.policy.version != learner.published_version)
            old = learner.policy
            learner.policy = conform(old, new.arms, "the learner's model")
            added = [n for n in new.arms.names if n not in old.arm_names]
            if isinstance(learner.floors, LearnerFloors):
                learner.floors.set_arms(new.arms.names, added)
            if isinstance(learner.ope, LiveEvaluation):
                if set(old.arm_names) != set(new.arms.names):
                    log.warning("off-policy estimates restart: the arm set changed")
                learner.ope = LiveEvaluation(ope_config(new.arms), new.arms.normalised_costs(),
                                             learner.r, svc.settings.prefix)  # fmt: skip
                await learner.ope.restore()
            svc.metrics.init_learner(new.arms.names)
            if svc.pacer is not None:
                svc.pacer.costs = new.arms.fixed_costs_usd().tolist()
                svc.pacer.controller.set_prices(svc.pacer.costs)
                log.info("budget pacing: new prices, p = %g", svc.pacer.controller.p)
            await learner.publish()  # the migrated model and the floors, for the routers

    async def apply_router(self, router: Router, new: RoutingConfig) -> None:
        svc = self.service
        async with router.busy:
            await router.calls_back()  # they finish under the arms they were drawn from
            old = router.dispatcher
            providers: dict[str, Provider] = {
                a.name: old.providers[a.name] for a in new.arms.arms if self._kept(a)
            }
            providers.update({n: p for n, p in self._new_providers.items() if n not in providers})
            unused = [p for n, p in self._new_providers.items() if providers[n] is not p]
            breakers = Breakers(new.arms.names, svc.settings.breaker_failures,
                                svc.settings.breaker_cooldown_s, on_change=svc.metrics.breaker_changed)  # fmt: skip
            breakers.carry_from(old.breakers)
            router.dispatcher = build_dispatcher(
                svc.settings, new.arms, providers, svc.metrics, breakers
            )
            for name, provider in old.providers.items():
                if providers.get(name) is not provider:
                    await provider.close()
            for provider in unused:  # built to validate the file; the kept arms keep theirs
                await provider.close()
            self._new_providers = {}
            router.config = dataclasses.replace(router.config, arms=new.arms)
            router.records.arms = new.arms
            router.adopt(conform(router.policy, new.arms, f"router {router.consumer}"))
            svc.metrics.init_router(new.arms.names)
