"""Runs a task's ``module:function`` entry point: ``python -m lumbung.node.entry module:function``.

This runs inside the sandbox, so it uses the standard library only. The task's parameters come as
JSON in LUMBUNG_PARAMS and are passed as keyword arguments. Exit code 0 when the function returns,
1 (with the traceback on stderr) when it raises.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m lumbung.node.entry module:function", file=sys.stderr)
        return 2
    module_name, function_name = argv[0].split(":", 1)
    # Run as a script (in a container), this file's directory heads sys.path: the node's modules
    # must not shadow the task's.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    # The task's own files (its working directory, its inputs) come before site-packages.
    inputs_dir = os.environ.get("LUMBUNG_INPUTS_DIR")
    for path in (inputs_dir, os.getcwd()):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    try:
        params = json.loads(os.environ.get("LUMBUNG_PARAMS") or "{}")
        function = getattr(importlib.import_module(module_name), function_name)
        function(**params)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
