"""Shared test support: the one harness that starts real clusters (``cluster.py``)."""
