"""A task for the end-to-end tests: counts to LUMBUNG_PARAM_STEPS, checkpointing every step.

It resumes from $LUMBUNG_CHECKPOINT_DIR/state.json, so a task moved to another node carries on
from its last checkpoint; result.json records where each run started.
"""

import json
import os
import sys
import time
from pathlib import Path

steps = int(os.environ.get("LUMBUNG_PARAM_STEPS", "10"))
step_s = float(os.environ.get("LUMBUNG_PARAM_STEP_S", "0.2"))
state_file = Path(os.environ["LUMBUNG_CHECKPOINT_DIR"]) / "state.json"
start = json.loads(state_file.read_text())["done"] if state_file.exists() else 0
print(f"starting at step {start} of {steps} on attempt {os.environ['LUMBUNG_ATTEMPT']}", flush=True)
if os.environ.get("LUMBUNG_PARAM_CHILD") == "1":
    # A grandchild, to show that cancelling kills all the task started. Pids inside a sandbox
    # are not the host's, so the test finds it by a marker in its command line.
    marker = f"599.{os.getpid()}{int(time.time() * 1000) % 10**9}"
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", marker])  # noqa: S606, S607
    print(f"child marker {marker}", flush=True)
for done in range(start + 1, steps + 1):
    time.sleep(step_s)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done}))
    tmp.replace(state_file)
    Path(os.environ["LUMBUNG_PROGRESS_FILE"]).write_text(str(done / steps))
    print(f"step {done}", flush=True)
if os.environ.get("LUMBUNG_PARAM_FAIL") == "1":
    print("failing on purpose", file=sys.stderr, flush=True)
    sys.exit(7)
Path("result.json").write_text(json.dumps({"started_at_step": start, "steps": steps}))
