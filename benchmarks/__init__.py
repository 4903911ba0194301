"""Benchmarks of loadbay against `psql \\copy` and pandas (DESIGN §10); see benchmarks/README.md."""
