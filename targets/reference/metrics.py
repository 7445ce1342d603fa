"""Prometheus metrics of a worker, named as vLLM names them where vLLM has the metric."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["WorkerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class WorkerMetrics:
    """One registry per server, so several apps can live in one test process."""

    def __init__(self, model_name: str, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.model_name = model_name
        r = self.registry
        running = Gauge("vllm:num_requests_running", "Requests in the running batch", labels,
                        registry=r)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", labels,
                        registry=r)
        running.labels(model_name).set_function(lambda: stats()["running"])
        waiting.labels(model_name).set_function(lambda: stats()["waiting"])
        steps = Gauge("llm_chaos_engine_steps", "Engine steps (decode iterations) so far",
                      labels, registry=r)
        steps.labels(model_name).set_function(lambda: stats()["step"])
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token",
                              labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency",
                             labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency",
                             labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed", labels,
                                     registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens",
                                         labels, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests",
                               [*labels, "finished_reason"], registry=r)
        self.rejected = Counter("llm_chaos_requests_rejected", "Requests refused (4xx/429)",
                                [*labels, "status"], registry=r)

    def finished(self, reason: str, prompt: int, generated: int, e2e: float) -> None:
        m = self.model_name
        self.success.labels(m, reason).inc()
        self.prompt_tokens.labels(m).inc(prompt)
        self.generation_tokens.labels(m).inc(generated)
        self.e2e.labels(m).observe(e2e)

    def render(self) -> bytes:
        return generate_latest(self.registry)
