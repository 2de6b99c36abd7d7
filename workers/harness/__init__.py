"""What runs around the service on one machine: the embedded demo, the producer, the local
replay LLM server, offline reports and the static checks of deploy/. Imports
``workers.service`` and ``bandit``; never ``workers.cli``."""
