"""The provider node: reports its hardware, claims tasks and runs them in a sandbox.

Kept free of imports on purpose: ``python -m lumbung.node.entry`` runs inside a task's sandbox (and
inside a container that only has the standard library), so importing this package must not pull in
httpx, pydantic or anything else. Import the modules themselves (``lumbung.node.agent``).
"""
