"""The demo's workload, shipped as package data and uploaded as a job input (never imported)."""
