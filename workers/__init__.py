"""metallm's processes and I/O: ``service`` (the live workers), ``harness`` (demo, producer,
replay server, reports) and ``cli`` (the ``metallm`` command line)."""
