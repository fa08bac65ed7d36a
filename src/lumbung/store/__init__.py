"""Persistence behind Protocols: the SQL store and its in-memory twin, and the blob stores."""
