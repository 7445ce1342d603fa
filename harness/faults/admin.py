"""In-target faults through the reference target's admin API: latency, slow tokens, error
rate, hang, truncated stream, memory leak and CPU burn, on the router or on workers. Each is
posted with a TTL, so the target drops it by itself even if nobody reverts it."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, one_of, revert_effect
from .heal import RemoveAdminFault

__all__ = ["AdminFault"]

Kind = Literal["latency", "slow_tokens", "error_rate", "hang", "truncate", "memory_leak",
               "cpu_burn"]
_KINDS = ("latency", "slow_tokens", "error_rate", "hang", "truncate", "memory_leak", "cpu_burn")
# the parameters of the admin API's FaultSpec (targets/reference/faults.py), checked up front
_PARAMS = frozenset({"latency_s", "delay_s", "probability", "status", "seed", "after_tokens",
                     "error_frame", "mb_per_s", "cap_mb", "threads"})


@dataclass(frozen=True)
class AdminFault:
    """One admin-API fault on the router (`on="router"`) or on `count` random workers (among
    `workers` if given). `params` are the FaultSpec fields, e.g. `{"latency_s": 0.5}`."""

    kind: Kind
    on: Literal["router", "worker"] = "router"
    count: int = 1
    workers: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"admin-{self.kind}"

    def validate(self, target: Target) -> None:
        one_of("admin fault kind", self.kind, _KINDS)
        unknown = sorted(set(self.params) - _PARAMS)
        if unknown:
            raise UsageError(f"admin fault params: unknown {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(_PARAMS))}")
        if self.on not in ("router", "worker"):
            raise UsageError(f"admin fault `on` {self.on!r}: use `router` or `worker`")
        if self.count < 1:
            raise UsageError(f"admin fault count must be at least 1, not {self.count}")
        target.faults()  # reachable, and the token is right
        if self.on == "worker":
            known = {w.id for w in target.workers()}
            unknown = [w for w in self.workers if w not in known]
            if unknown:
                raise UsageError(f"admin fault workers: no worker {', '.join(unknown)} in the "
                                 f"target; it has {', '.join(sorted(known)) or 'none'}")

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        names = ["router"] if self.on == "router" else self._workers(target, rng, ledger)
        added: list[dict[str, Any]] = []
        for name in names:
            spec = {**self.params, "kind": self.kind, "target": name,
                    "ttl": round(max(ledger.ttl, 0.1), 3)}
            fault = target.add_fault(spec)
            # noted after the POST (its id is not known before); the TTL covers the gap
            ledger.note(RemoveAdminFault(target.url, target.admin_token or "", str(fault["id"])))
            if name != "router":
                ledger.take(name)
            added.append({"id": fault["id"], "target": name, "expires_at": fault.get("expires_at")})
        return ledger.effect({"kind": self.kind, "params": dict(self.params), "faults": added})

    def revert(self, target: Target, effect: Effect) -> None:
        revert_effect(effect)

    def _workers(self, target: Target, rng: random.Random, ledger: Ledger) -> list[str]:
        eligible = sorted(w.id for w in target.workers()
                          if w.state != "dead" and w.id not in ledger.busy
                          and (not self.workers or w.id in self.workers))
        count = self.count if ledger.worker_budget is None else min(self.count,
                                                                     ledger.worker_budget)
        if count < 1 or not eligible:
            raise TargetError(f"{self.name}: no eligible worker (blast radius or none live)")
        return rng.sample(eligible, min(count, len(eligible)))
