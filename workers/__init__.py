"""metallm's processes and I/O: the CLI, reports and plots (and, later, the stream workers)."""
