"""Segment volume: running the models on a scan, post-processing, and the report's caveats (Qt-free)."""
