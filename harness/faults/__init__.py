"""The nemesis: faults as configuration (`validate`, `inject` -> effect, `revert(effect)`),
the injector that schedules and always reverts them, the guard, and `faults clear`.

- `base`: the Fault protocol, Effect and Ledger; `heal`: the undo of each action as data.
- `process`, `admin`, `host`, `network`, `container`: the fault families.
- `docker_engine`: the Docker client that container faults and their heals act through.
- `schedule`: at / for / every steps and abort conditions; `injector`: the FaultInjector.
- `history`: recorders for history lines; `state`, `guard`: healing a run that died.
"""

from .admin import AdminFault
from .base import Effect, Fault, Ledger
from .container import ContainerFault
from .history import JsonlRecorder, MemoryRecorder, Recorder
from .host import CpuHog, MemoryHog
from .injector import FaultInjector, RunResult, Terminated
from .network import ProxyDown, ToxicFault
from .process import ProcessFault, Victims
from .schedule import AbortCondition, NoLiveWorkers, RouterUnhealthy, Step

__all__ = [
    "AbortCondition",
    "AdminFault",
    "ContainerFault",
    "CpuHog",
    "Effect",
    "Fault",
    "FaultInjector",
    "JsonlRecorder",
    "Ledger",
    "MemoryHog",
    "MemoryRecorder",
    "NoLiveWorkers",
    "ProcessFault",
    "ProxyDown",
    "Recorder",
    "RouterUnhealthy",
    "RunResult",
    "Step",
    "Terminated",
    "ToxicFault",
    "Victims",
]
