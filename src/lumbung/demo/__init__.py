"""The demo (``lumbung demo``) and the one launcher of real hub and node processes.

``cluster`` starts and stops hubs and nodes on 127.0.0.1 for the demo, the end-to-end tests and
the benchmarks; ``run`` is the demo's frame (the cluster, the audit, the settlement); ``training``
and ``sweep`` are its two scenarios. ``digits_sweep.py`` is the sweep's workload: package data,
uploaded as a job input and run in a task's sandbox, never imported here.
"""
