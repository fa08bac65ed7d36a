"""The market: jobs, tasks and leases as plain objects; fan-out, matching and plans. No I/O."""
