"""prism cluster: the floor (configuration, errors, hash ring, local services); entry points live in cluster/cli/."""
