"""Which model a worker starts from: the deployment's own snapshot, a given one, or none.

``load_model`` reads a snapshot a user names (``--model FILE``) and fits it to the config
(bandit.model_check: other arms are refused unless migrated). ``starting_policy`` keeps the
service's rule: the deployment's newest snapshot (Redis, else ``--model-dir``) wins unless
the given model's version is higher (a deployment that learned since it started from that
file goes on from what it learned); each start says which one it took, and a cold start
(model version 0) says how to start warm.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bandit.config import RoutingConfig
from bandit.embedder import EMBEDDING_DIM
from bandit.errors import MetalLMError, PolicyError
from bandit.model_check import fit_to_config
from bandit.policy import Policy

log = logging.getLogger(__name__)
COLD_HINT = (
    "to start warm, train a snapshot (metallm train --dataset NAME --out policy.bin, or "
    "--data FILE --config FILE) and pass --model policy.bin"
)


def load_model(path: Path, config: RoutingConfig, migrate: bool = False) -> Policy:
    """The snapshot at ``path``, fitted to ``config``; a one-line MetalLMError if it is not
    a snapshot or does not fit."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MetalLMError(f"--model {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        policy = Policy.from_bytes(data)
    except PolicyError as exc:
        raise PolicyError(f"--model {path}: {exc}") from None
    policy, notes = fit_to_config(policy, config, EMBEDDING_DIM, migrate=migrate,
                                  source=f"--model {path}")  # fmt: skip
    for note in notes:
        log.warning("%s", note)
    return policy


def starting_policy(
    deployed: Policy | None, given: Policy | None, given_name: str, fresh: Policy, roles: str
) -> Policy:
    """The policy a worker starts from, logged: ``deployed`` (the deployment's newest
    snapshot), ``given`` (``--model``, named ``given_name``) or ``fresh`` (cold)."""
    if deployed is not None and given is not None and deployed.version == given.version:
        # the deployment already holds it (a learner that started from it has published it)
        log.info("starting %s from the deployment's snapshot, model version %d, the version "
                 "of %s", roles, deployed.version, given_name)  # fmt: skip
        return deployed
    if deployed is not None and given is not None and deployed.version > given.version:
        # a warning: the model the operator named is not the one that routes
        log.warning("starting %s from the deployment's snapshot, model version %d: it is "
                    "newer than %s (version %d), which is not used", roles,
                    deployed.version, given_name, given.version)  # fmt: skip
        return deployed
    if deployed is not None and given is None:
        log.info("starting %s from the deployment's snapshot, model version %d", roles,
                 deployed.version)  # fmt: skip
        return deployed
    if given is not None:
        log.info("starting %s from %s, model version %d", roles, given_name, given.version)
        return given
    log.warning("starting %s cold (model version 0, untrained): no snapshot in Redis or "
                "--model-dir and no --model; %s", roles, COLD_HINT)  # fmt: skip
    return fresh
