"""Everything that produces an answer: local llama.cpp models and OpenAI-compatible clouds."""
