"""The hub: the market's control plane over HTTP (FastAPI under /v1), backed by a store."""
