"""Benchmarks: status-proxy against the fastest the same machine does without it."""
