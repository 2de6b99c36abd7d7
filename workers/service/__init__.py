"""The live service: router and learner workers, Redis Streams plumbing, LLM providers,
Prometheus metrics and health probes. Imports ``bandit``; never ``workers.harness`` or
``workers.cli``."""
