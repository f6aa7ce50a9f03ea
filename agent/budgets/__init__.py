"""Budget enforcement: calendar budget periods in a policy's time zone (`periods`), requests and
tokens per minute per user or department (`ratelimit`), and reservations against money budgets
(`enforcer`)."""
