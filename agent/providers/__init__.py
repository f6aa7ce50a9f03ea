"""Everything that produces an answer: local llama.cpp models, OpenAI-compatible and Azure OpenAI clouds."""
