"""Helpers for tests and benchmarks, kept out of the shipped package (e.g. `tests.support.tiny_models`,
`tests.support.s3`). Importable as `tests.support` with the repository root on sys.path: pytest puts it there
(`pythonpath` in pyproject.toml); benchmarks insert it themselves."""
