"""Benchmarks for the quality targets of DESIGN section 8, each against a same-run baseline."""
