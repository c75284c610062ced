"""prism router: request models, merge, fusion, coordinator and the Serve ingress."""
