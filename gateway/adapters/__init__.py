"""Adapters: what the core's ports talk to (JWKS fetching, Redis, the backend, metrics, audit)."""
