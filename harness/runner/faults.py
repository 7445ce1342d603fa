"""The experiment's fault section as the injector's input: a Step per fault spec, and the abort
conditions of `nemesis.abort`."""

from __future__ import annotations

from typing import Literal, cast

from ..experiment import (
    AdminFaultSpec,
    ContainerFaultSpec,
    CpuHogSpec,
    Experiment,
    FaultSpec,
    MemoryHogSpec,
    ProcessFaultSpec,
    ProxyDownSpec,
    ToxicSpec,
)
from ..faults import (
    AbortCondition,
    AdminFault,
    ContainerFault,
    CpuHog,
    Fault,
    MemoryHog,
    NoLiveWorkers,
    ProcessFault,
    ProxyDown,
    RouterUnhealthy,
    Step,
    ToxicFault,
    Victims,
)

__all__ = ["abort_conditions", "build_fault", "build_steps"]


def build_fault(spec: FaultSpec) -> Fault:
    """The Fault object a validated spec describes."""
    if isinstance(spec, ProcessFaultSpec):
        # the spec's Literal kinds guarantee these casts
        action = cast(Literal["kill", "terminate", "pause"], spec.kind.removeprefix("process-"))
        return ProcessFault(action, Victims(role=spec.on, count=spec.count,
                                            workers=spec.workers, pids=spec.pids))
    if isinstance(spec, AdminFaultSpec):
        kind = cast(Literal["latency", "slow_tokens", "error_rate", "hang", "truncate",
                            "memory_leak", "cpu_burn"], spec.kind.removeprefix("admin-"))
        params = spec.params.model_dump(exclude_none=True)
        return AdminFault(kind, on=spec.on, count=spec.count, workers=spec.workers,
                          params=params)
    if isinstance(spec, ToxicSpec):
        return ToxicFault(api=spec.api, proxy=spec.proxy,
                          type=spec.kind.removeprefix("network-"),
                          attributes=dict(spec.attributes), stream=spec.stream,
                          toxicity=spec.toxicity)
    if isinstance(spec, ProxyDownSpec):
        return ProxyDown(api=spec.api, proxy=spec.proxy)
    if isinstance(spec, CpuHogSpec):
        return CpuHog(processes=spec.processes)
    if isinstance(spec, MemoryHogSpec):
        return MemoryHog(mb=spec.mb)
    if isinstance(spec, ContainerFaultSpec):
        verb = cast(Literal["kill", "pause", "restart", "disconnect"],
                    spec.kind.removeprefix("container-"))
        return ContainerFault(verb, container=spec.container, label=spec.label,
                              count=spec.count, network=spec.network)
    raise TypeError(f"no fault for {type(spec).__name__}")  # a new spec kind not wired here


def build_steps(experiment: Experiment) -> list[Step]:
    """One injector step per fault of the experiment, in file order."""
    return [Step(build_fault(spec), at=spec.at, duration=spec.duration,
                 every=spec.every, times=spec.times)
            for spec in experiment.faults]


def abort_conditions(experiment: Experiment) -> list[AbortCondition]:
    """The abort conditions `nemesis.abort` asks for."""
    abort = experiment.nemesis.abort
    found: list[AbortCondition] = []
    if abort.no_live_workers is not None:
        found.append(NoLiveWorkers(abort.no_live_workers))
    if abort.router_unhealthy is not None:
        found.append(RouterUnhealthy(abort.router_unhealthy))
    return found
