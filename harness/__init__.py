"""llm-chaos-harness: chaos and load testing for LLM deployments."""

__version__ = "0.1.0"
