"""Benchmarks: ``python -m bench charges --help``. They print figures; they assert nothing."""
