"""Routing decisions: which tier answers a request, and why. Pure decisions, no I/O."""
