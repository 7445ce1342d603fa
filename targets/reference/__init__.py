"""The reference target: a real OpenAI-compatible LLM server with continuous batching."""

from typing import Any

from .params import GenerationRequest, Output, SamplingParams
from .protocol import Engine, EngineFull, Prompt
from .sim import SimEngine

__all__ = [
    "BatchEngine",
    "Engine",
    "EngineFull",
    "GenerationRequest",
    "Output",
    "Prompt",
    "SamplingParams",
    "SimEngine",
]


def __getattr__(name: str) -> Any:
    # BatchEngine pulls in torch; the simulated engine must start without it.
    if name == "BatchEngine":
        from .engine import BatchEngine

        return BatchEngine
    raise AttributeError(name)
