"""Ray Serve's host: the gateway as the ingress deployment, the engine on model replicas."""
