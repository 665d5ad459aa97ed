"""Helpers only this test suite uses (not shipped in cthm.testing): importable as `support.*`
because pytest puts tests/ on sys.path (`pythonpath` in pyproject.toml)."""
