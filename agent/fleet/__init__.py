"""The fleet on the central share: every agent publishes its ledger as Parquet, admins read it with DuckDB."""
