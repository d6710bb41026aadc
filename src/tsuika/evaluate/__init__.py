"""Metrics, baselines, statistical comparison and plain-words verdicts."""
