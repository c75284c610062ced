"""Locust-based load test harness for a running prism (local or Kubernetes)."""
