"""Options shared by several commands, and what they turn into: the routing config, the
service settings, the data set and its embeddings.

The environment is read once, in ``main``, and handed to every command as ``env``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bandit.config import RoutingConfig, builtin_config, load_config
from bandit.data_config import check_arms, config_from_data
from bandit.datasets import DATA_DIR_ENV, LOADERS, Dataset, load_dataset
from bandit.datasets.imported import read_records
from bandit.embedder import CACHE_DIR_ENV, Embedder, default_cache_dir
from bandit.errors import MetalLMError
from workers.service.settings import ServiceSettings

log = logging.getLogger("metallm")
DATA_DIR_HELP = (
    f"folder with the recorded data sets (default: ${DATA_DIR_ENV}, else ../shared/data)"
)
CACHE_DIR_HELP = f"where embeddings and the ONNX export are cached (default: ${CACHE_DIR_ENV}, else ~/.cache/metallm)"
CONFIG_HELP = "TOML file with [task], [policy], [embedder], [service] and [[arms]]"


def add_dataset_options(p: argparse.ArgumentParser, data_file: bool = False) -> None:
    """--dataset, --data-dir, --config, --cache-dir, --seed, --limit: the offline commands';
    with ``data_file``, also --data FILE (instead of --dataset) and --prompt-column."""
    if data_file:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--dataset", choices=sorted(LOADERS), help="recorded data set to use")
        src.add_argument(
            "--data",
            type=Path,
            metavar="FILE",
            help="your own recorded outcomes instead: long format (.jsonl, or .csv with an "
            "'arm' column) or wide format (.csv with '<model>|total_cost' columns); see the "
            "README, section 'Your own data'",
        )
        p.add_argument(
            "--prompt-column",
            metavar="NAME",
            help="with a wide --data file: the column holding the query text (default: text)",
        )
    else:
        p.add_argument(
            "--dataset", required=True, choices=sorted(LOADERS), help="recorded data set to use"
        )
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--config",
        help=f"{CONFIG_HELP} (default: the data set's built-in config, bandit/configs/NAME.toml; "
        "with --data, one built from the file: a replay arm per model at its mean recorded "
        "cost, default policy)",
    )
    p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, training order and sampling (default 0)",
    )
    p.add_argument("--limit", type=int, help="use a seeded random subset of this many queries (for quick runs)")  # fmt: skip


def add_redis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url", help="Redis to use (default: $REDIS_URL, else redis://127.0.0.1:6379/0)"
    )
    p.add_argument("--prefix", help="prefix of every stream and key (default: $METALLM_PREFIX, else metallm:)")  # fmt: skip


def add_config_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help=CONFIG_HELP)
    src.add_argument("--dataset", choices=sorted(LOADERS), help="use the built-in config of a recorded data set")  # fmt: skip


def service_settings(
    args: argparse.Namespace, env: Mapping[str, str], cfg: RoutingConfig | None = None
) -> ServiceSettings:
    """The config file's [service] table, then the environment, then every option whose
    destination is a ServiceSettings field (an option not given is None and changes nothing)."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(ServiceSettings)}
    return ServiceSettings.from_env(env, cfg.service if cfg else None, **overrides)


def cache_dir(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    given = getattr(args, "cache_dir", None) or env.get(CACHE_DIR_ENV)
    return Path(given) if given else default_cache_dir()


def data_dir(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    return getattr(args, "data_dir", None) or env.get(DATA_DIR_ENV) or None


def routing_config(
    args: argparse.Namespace, env: Mapping[str, str], ds: Dataset | None = None
) -> RoutingConfig:
    """--config FILE, else the built-in config of --dataset, else (--data, read into ``ds``)
    one built from the file's arms; with the embedder's caches under the cache folder
    (unless the config names its own ONNX folder). With --data, the config's arms must be
    the file's."""
    data = getattr(args, "data", None)
    if args.config:
        cfg = load_config(args.config)
    elif data:
        if ds is None:
            raise MetalLMError("--data without --config: read the file before the config")
        cfg = config_from_data(ds)
    else:
        cfg = builtin_config(args.dataset)
    if data and ds is not None and args.config:
        check_arms(cfg, ds, str(args.config), Path(data).name)
    cache = cache_dir(args, env)
    embedder = dataclasses.replace(
        cfg.embedder,
        cache_dir=str(cache / "embeddings"),
        onnx_dir=cfg.embedder.onnx_dir or str(cache / "onnx"),
    )
    return dataclasses.replace(cfg, embedder=embedder)


def dataset(args: argparse.Namespace, env: Mapping[str, str]) -> Dataset:
    """--dataset from --data-dir, or the --data file (what was read goes to stderr), cut to
    a seeded subset of --limit rows when given."""
    if getattr(args, "data", None):
        ds, summary = read_records(args.data, getattr(args, "prompt_column", None))
        for line in summary.lines():
            print(line, file=sys.stderr)
    else:
        ds = load_dataset(args.dataset, data_dir(args, env))
    if args.limit:
        if not 10 <= args.limit <= len(ds):
            raise MetalLMError(
                f"--limit {args.limit} must be between 10 and {len(ds)} (the data set's size)"
            )
        ds = ds.subset(np.sort(np.random.default_rng(args.seed).permutation(len(ds))[: args.limit]))
    return ds


def embed(ds: Dataset, cfg: RoutingConfig) -> np.ndarray:
    t0 = time.perf_counter()
    vectors = Embedder(cfg.embedder).embed_cached(list(ds.texts), progress=True)
    log.info("embeddings of %d queries ready in %.1f s", len(ds), time.perf_counter() - t0)
    return vectors
