"""Prices: the maintained table (genai-prices) with per-model overrides, and token estimates."""
