"""The ledger: a verifiable transparency log of credits and promises (RFC 9162 Merkle tree)."""
