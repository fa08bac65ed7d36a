"""Verification: what decides whether work is paid.

Plain objects in and out, no I/O (the hub drives it): replicated results and their quorum
(``quorum``, ``compare``), how often a node's results are checked (``adaptive``), cheap screening
of training updates (``screening``), replay and bisection verdicts (``replay``), hardware
challenges (``hardware``) and how much unverified work a stake covers (``stake``).
"""
