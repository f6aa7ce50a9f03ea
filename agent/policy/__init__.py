"""Policies: the schema admins write, its Ed25519 signature, and the sync from the share."""
