"""chatstate: conversation state for chat bots and LLM agents."""
