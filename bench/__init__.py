"""Benchmarks. Each prints a table and ratios measured in the same run; results go in bench/RESULTS.md."""
