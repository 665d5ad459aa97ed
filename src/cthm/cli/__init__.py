"""The `cthm` command line: `serve` and the client commands that talk to the API over HTTP.

Nothing runs at import time; the entry point is `cthm.cli.main:main`.
"""
