"""The witness process (``lumbung witness --hub URL``): cosigns a hub's log checkpoints after
checking that each one extends the last it cosigned, and refuses a log that forks."""

from lumbung.witness.cosigner import COSIGNATURES_PATH, Rollback, Witness, default_name, state_path

__all__ = ["COSIGNATURES_PATH", "Rollback", "Witness", "default_name", "state_path"]
