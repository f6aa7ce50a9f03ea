"""Alerts that reach people: the outbox that delivers alert events until a receiver took them."""
