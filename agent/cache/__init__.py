"""Semantic cache: a similar question already answered costs nothing; a different one is never served."""
