"""Count the primes below a limit, checkpointing as it goes: a small example task for Lumbung.

Run by a node as `python inputs/primes.py LIMIT`. It saves its progress in
$LUMBUNG_CHECKPOINT_DIR, so if its node disappears the task resumes on another node from the last
checkpoint instead of starting over, and writes result.json at the end.
"""

import json
import os
import sys
from pathlib import Path

CHUNK = 2_000


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def main() -> None:
    limit = int(sys.argv[1])
    state_file = Path(os.environ.get("LUMBUNG_CHECKPOINT_DIR", ".")) / "primes.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"next": 0, "count": 0}
    if state["next"]:
        print(f"resuming at {state['next']} with {state['count']} primes found", flush=True)
    while state["next"] < limit:
        end = min(state["next"] + CHUNK, limit)
        state["count"] += sum(is_prime(n) for n in range(state["next"], end))
        state["next"] = end
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)  # atomic: a checkpoint is never half-written
        progress = os.environ.get("LUMBUNG_PROGRESS_FILE")
        if progress:
            Path(progress).write_text(str(end / limit))
    print(f"{state['count']} primes below {limit}", flush=True)
    Path("result.json").write_text(json.dumps({"limit": limit, "primes": state["count"]}))


if __name__ == "__main__":
    main()
