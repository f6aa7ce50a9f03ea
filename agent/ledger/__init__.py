"""The SQLite ledger: the one place with SQL."""
