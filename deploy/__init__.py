"""Deployment assets and tools: datasets, benchmarks, Serve config, load test."""
