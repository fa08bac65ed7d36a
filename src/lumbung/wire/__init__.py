"""Shapes on the wire: the job spec and the hub's request and response models (API version 1)."""
