"""Keys and signatures: Ed25519 identities and signed HTTP requests (RFC 9421, RFC 9530)."""
