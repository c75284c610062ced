"""prism router: request models, pure planning/merge/fusion, the coordinator and what it delegates to, the ingress."""
