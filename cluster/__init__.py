"""prism cluster: configuration, hash ring, services, bootstrap and CLI."""
