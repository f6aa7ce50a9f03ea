"""The aifinops tray app: a Qt client of the agent's HTTP API (chat, dashboard, budget alerts)."""
