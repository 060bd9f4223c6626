"""Pieces of ``make bench`` (loadtests/bench_harness.py), one concept per module."""
