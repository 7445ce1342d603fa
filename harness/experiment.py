"""The experiment file (`llm-chaos run X.yaml`): target, load, fault schedule, steady-state
probes, checks and report, validated with pydantic before anything starts.

Every mistake a user can make is a UsageError whose message names the field path (e.g.
`faults[2].at`) and says what to change; a YAML syntax error names its line. `--set a.b=value`
overrides are applied to the parsed document before validation, so they are checked the same
way. The resolved experiment (defaults filled in, the seed drawn) is written into the run
directory as `experiment.yaml`, and loading that file gives the same experiment back.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import secrets
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from .checks.config import CheckConfig
from .endpoint import (
    API_KEY_ENV,
    auth_headers,
    header_problem,
    normalize_base_url,
    tls_context,
)
from .errors import UsageError
from .runner.rundir import EXPERIMENT_FILE

__all__ = [
    "ADMIN_KINDS",
    "AUTO_SHAPES",
    "CONTAINER_ACTIONS",
    "FAULT_KINDS",
    "PROCESS_ACTIONS",
    "TOXIC_ATTRIBUTES",
    "AdminFaultSpec",
    "ContainerFaultSpec",
    "CpuHogSpec",
    "Experiment",
    "FaultSpec",
    "HttpProbe",
    "LoadConfig",
    "MemoryHogSpec",
    "MetricProbe",
    "NemesisConfig",
    "ProbeSpec",
    "ProcessFaultSpec",
    "ProxyDownSpec",
    "ReportConfig",
    "TargetConfig",
    "ToxicSpec",
    "apply_overrides",
    "load_experiment",
    "parse_experiment",
]


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|m|h)?\s*$")


def _seconds(value: Any) -> Any:
    """`30`, `30s`, `1.5m`, `500ms`, `2h` -> seconds; anything else is left to pydantic."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ValueError(f"not a duration: {value!r}; write seconds (30) or a number with "
                             "a unit (500ms, 30s, 2m, 1h)")
        return float(found.group(1)) * _UNITS[found.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]
PositiveSeconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]
NonNegativeSeconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)


# -- target ------------------------------------------------------------------------------------

_REFERENCE_ONLY = ("workers", "min_workers", "max_workers", "target_ongoing", "upscale_delay",
                   "downscale_delay", "worker_capacity", "max_queue", "max_attempts",
                   "memory_limit_mb", "resume_streams", "audit_log", "audit_content",
                   "audit_fsync", "stall_timeout", "worker_args", "audit_lossy_after",
                   "planted_bug")


class TargetConfig(_Model):
    """The reference target, started by the harness (no `url`), or a running deployment at
    `url` spoken to through an adapter."""

    url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    adapter: Literal["openai", "vllm", "reference"] = "reference"
    admin_token: str | None = None
    model: str = "smollm2"
    # how the load reaches the endpoint: extra headers, the API key's environment variable
    # (the key itself is never in the file or the run directory), TLS settings
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    # the reference target's own options (`llm-chaos serve`)
    workers: int = Field(default=1, ge=1, le=64)
    min_workers: int | None = Field(default=None, ge=0, le=64)
    max_workers: int | None = Field(default=None, ge=1, le=64)
    target_ongoing: float = Field(default=2.0, gt=0)
    upscale_delay: NonNegativeSeconds = 1.0
    downscale_delay: NonNegativeSeconds = 5.0
    request_timeout: PositiveSeconds = 120.0
    worker_capacity: int = Field(default=16, ge=1)
    max_queue: int = Field(default=64, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    memory_limit_mb: float | None = Field(default=None, gt=0)
    resume_streams: bool = False
    audit_log: bool = True
    audit_content: Literal["full", "hash", "none"] = "hash"
    audit_fsync: Literal["group", "off"] = "group"
    stall_timeout: PositiveSeconds = 3.0
    worker_args: tuple[str, ...] = ()
    # test-only: a known defect of the reference target for `llm-chaos explore` to find
    planted_bug: Literal["audit-loss-kill-while-paused"] | None = None
    # a deliberately weakened target (game-day twins): the audit log fails after this many
    # records and the router serves on without it, so every later request goes unaudited
    audit_lossy_after: int | None = Field(default=None, ge=0)

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        # with or without /v1: one base, as the load client takes it
        try:
            return None if value is None else normalize_base_url(value)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("host ")) from exc

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            problem = header_problem(name, text)
            if problem is not None:
                raise ValueError(problem)
        return {name: text.strip() for name, text in value.items()}

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            # not echoed: it may be the key itself, pasted into the wrong field
            raise ValueError(f"must name the environment variable that holds the API key"
                             f" (letters, digits and _), e.g. {API_KEY_ENV}; the key itself "
                             "never goes in the file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TargetConfig:
        if self.ca_bundle is not None and self.insecure:
            raise ValueError("insecure: true contradicts ca_bundle (which checks the server "
                             "against that CA); remove one of them")
        if self.url is not None:
            given = [name for name in _REFERENCE_ONLY if name in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]}: an option of the reference target the harness "
                                 "starts; remove it, or remove `url` to start the reference "
                                 "target")
        elif self.adapter != "reference":
            raise ValueError(f"adapter: {self.adapter!r} needs `url` (the deployment to test); "
                             "without `url` the harness starts the reference target")
        if (self.min_workers is not None and self.max_workers is not None
                and self.min_workers > self.max_workers):
            raise ValueError(f"min_workers: {self.min_workers} is more than max_workers "
                             f"({self.max_workers})")
        return self

    @property
    def reference(self) -> bool:
        """Whether the harness starts the reference target itself."""
        return self.url is None

    def api_key(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The API key from the environment variable `api_key_env` names (None without one);
        UsageError when that variable is unset or empty."""
        if self.api_key_env is None:
            return None
        key = environ.get(self.api_key_env)
        if not key:
            raise UsageError(f"target.api_key_env: the environment variable "
                             f"{self.api_key_env} is not set; export it with the API key, or "
                             "remove api_key_env")
        return key

    def check_tls(self) -> None:
        """UsageError when `ca_bundle` cannot be read as a PEM file of CA certificates."""
        try:
            tls_context(self.ca_bundle, self.insecure)
        except UsageError as exc:
            raise UsageError(f"target.ca_bundle: {str(exc).partition(': ')[2]}") from exc

    def request_headers(self) -> dict[str, str]:
        """What the harness's own requests to the target's API carry (steady-state probes):
        `headers` and the API key; UsageError as `api_key` raises it."""
        return dict(auth_headers(self.headers.items(), self.api_key(), explicit_key=False))

    def tls(self) -> ssl.SSLContext | None:
        """The TLS settings of every client of the target (None: the system's defaults)."""
        return tls_context(self.ca_bundle, self.insecure)

    def endpoint_args(self) -> list[str]:
        """The load generator's options for `headers`, `ca_bundle` and `insecure` (the API key
        goes through the environment, never a command line)."""
        args = [f"--header={name}: {value}" for name, value in self.headers.items()]
        if self.ca_bundle is not None:
            args.append(f"--ca-bundle={self.ca_bundle}")
        if self.insecure:
            args.append("--insecure")
        return args

    def serve_args(self) -> list[str]:
        """The `llm-chaos serve` options for this target (port, token and paths come from the
        run)."""
        args = ["--model", self.model, "--workers", str(self.workers),
                "--target-ongoing", f"{self.target_ongoing:g}",
                "--upscale-delay", f"{self.upscale_delay:g}",
                "--downscale-delay", f"{self.downscale_delay:g}",
                "--request-timeout", f"{self.request_timeout:g}",
                "--worker-capacity", str(self.worker_capacity),
                "--max-queue", str(self.max_queue), "--max-attempts", str(self.max_attempts),
                "--stall-timeout", f"{self.stall_timeout:g}"]
        if self.min_workers is not None:
            args += ["--min-workers", str(self.min_workers)]
        if self.max_workers is not None:
            args += ["--max-workers", str(self.max_workers)]
        if self.memory_limit_mb is not None:
            args += ["--worker-memory-limit", f"{self.memory_limit_mb:g}"]
        if self.resume_streams:
            args.append("--resume-streams")
        args += ["--audit-content", self.audit_content, "--audit-fsync", self.audit_fsync]
        if self.audit_lossy_after is not None:
            args += ["--audit-fault-after", str(self.audit_lossy_after), "--audit-fail-open"]
        if self.planted_bug is not None:
            args += ["--planted-bug", self.planted_bug]
        args += [f"--worker-arg={arg}" for arg in self.worker_args]
        return args


# -- load --------------------------------------------------------------------------------------

AUTO_SHAPES = ("steady", "ramp", "step", "soak")


class LoadConfig(_Model):
    """The Locust run: scenario locustfile(s), users, shape, duration, arrival process.

    `users: auto` sizes the load to the target: the runner measures its capacity before the load
    (`harness/runner/capacity.py`) and runs `sized(n)`. Until then `users` holds `max_users`
    (the most it may become) and `auto_users` is true; the file form `auto` is dumped back.
    """

    locustfile: tuple[str, ...] = ("scenarios/chat_qa.py",)
    users: int = Field(default=4, ge=1)
    utilization: float = Field(default=0.5, gt=0, le=1)
    max_users: int = Field(default=64, ge=1, le=10000)
    spawn_rate: float = Field(default=1.0, gt=0)
    duration: PositiveSeconds
    shape: Literal["steady", "ramp", "step", "spike", "soak"] = "steady"
    ramp_time: PositiveSeconds = 10.0
    step_users: int = Field(default=1, ge=1)
    step_time: PositiveSeconds = 10.0
    spike_users: int = Field(default=0, ge=0)
    spike_at: NonNegativeSeconds = 10.0
    spike_duration: PositiveSeconds = 10.0
    arrival: Literal["closed", "poisson", "constant"] = "closed"
    rate: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    prompt_tokens: str | None = None
    dataset: str | None = None  # the load generator's --dataset (JSONL or ShareGPT JSON)
    request_timeout: PositiveSeconds = 300.0

    # `users: auto` is kept out of the `users` field so that the field stays an int for every
    # reader (explore, the --chaos-plan plugin); a frozen model may still set a private attr
    _auto: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _one_locustfile(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("locustfile"), str):
            return {**data, "locustfile": [data["locustfile"]]}
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _auto_users(cls, data: Any, handler: ModelWrapValidatorHandler[LoadConfig]
                    ) -> LoadConfig:
        users = data.get("users") if isinstance(data, dict) else None
        auto = users == "auto"
        if isinstance(users, str) and not auto and not users.strip().isdigit():
            raise ValueError(f"users: must be a number of users (1 or more) or auto (sized "
                             f"from the target's capacity measured before the load); got "
                             f"{_short(users)}")
        if auto:
            data = {**data, "users": 1}  # max_users once that is validated
        load = handler(data)
        if auto:
            load = load.model_copy(update={"users": load.max_users})
            if load.arrival != "closed":
                raise ValueError(f"users: auto needs arrival: closed (a closed-loop user's "
                                 f"rate is what the capacity measurement sizes); with arrival "
                                 f"{load.arrival!r} give users a number")
            if load.shape not in AUTO_SHAPES:
                raise ValueError(f"users: auto works with the shapes {', '.join(AUTO_SHAPES)}; "
                                 f"shape {load.shape!r} has a fixed spike_users, so give users "
                                 "a number")
            load._auto = True
        return load

    @model_serializer(mode="wrap")
    def _dump_auto(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self._auto and isinstance(data, dict):
            data["users"] = "auto"
        return data

    @property
    def auto_users(self) -> bool:
        """Whether the file said `users: auto` and the users are not measured yet."""
        return self._auto

    def sized(self, users: int) -> LoadConfig:
        """This load with `users` fixed (what the capacity measurement chose)."""
        load = self.model_copy(update={"users": users})
        load._auto = False
        return load

    @model_validator(mode="after")
    def _rate(self) -> LoadConfig:
        if self.arrival != "closed" and self.rate is None:
            raise ValueError(f"rate: required, arrival {self.arrival!r} is an open loop; give "
                             "the requests per second")
        if not self.locustfile:
            raise ValueError("locustfile: give at least one scenario file")
        return self

    def locust_args(self, seed: int) -> list[str]:
        """Locust's and the harness plugin's options for this load (host and run dir aside)."""
        if self._auto:
            raise UsageError("load.users: auto is sized from the target's capacity before the "
                             "load starts (llm-chaos run measures it); give users a number here")
        # one -f, comma-separated: Locust keeps only the last of several -f options
        args = ["-f", ",".join(self.locustfile), "--headless",
                "-u", str(self.users), "-r", f"{self.spawn_rate:g}",
                "-t", f"{max(1, math.ceil(self.duration))}s", "--seed", str(seed),
                "--load-shape", self.shape, "--arrival", self.arrival,
                "--ramp-time", f"{self.ramp_time:g}", "--step-users", str(self.step_users),
                "--step-time", f"{self.step_time:g}", "--spike-users", str(self.spike_users),
                "--spike-at", f"{self.spike_at:g}", "--spike-duration",
                f"{self.spike_duration:g}", "--request-timeout", f"{self.request_timeout:g}"]
        if self.rate is not None:
            args += ["--rate", f"{self.rate:g}"]
        if self.max_tokens is not None:
            args += ["--max-tokens", str(self.max_tokens)]
        if self.prompt_tokens is not None:
            args += ["--prompt-tokens", self.prompt_tokens]
        if self.dataset is not None:
            args += ["--dataset", self.dataset]
        return args


# -- faults ------------------------------------------------------------------------------------

PROCESS_ACTIONS = ("kill", "terminate", "pause")
ADMIN_KINDS = ("latency", "slow_tokens", "error_rate", "hang", "truncate", "memory_leak",
               "cpu_burn")
CONTAINER_ACTIONS = ("kill", "pause", "restart", "disconnect")
# the attributes of each Toxiproxy toxic type harness/faults/network.py offers
TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slicer": ("average_size", "size_variation", "delay"),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "limit_data": ("bytes",),
    # our proxy's own (`llm-chaos proxy`): OpenAI streams held, cut or left without [DONE]
    "sse_stall": ("events",),
    "sse_cut": ("events",),
    "sse_drop_done": (),
}
FAULT_KINDS: tuple[str, ...] = (
    *(f"process-{a}" for a in PROCESS_ACTIONS),
    *(f"admin-{k}" for k in ADMIN_KINDS),
    *(f"network-{t}" for t in TOXIC_ATTRIBUTES), "network-down",
    "host-cpu-hog", "host-memory-hog",
    *(f"container-{a}" for a in CONTAINER_ACTIONS),
)


class _Step(_Model):
    """When: `at` seconds after the load starts, for `for` seconds, again `every` seconds (at
    most `times` injections)."""

    at: NonNegativeSeconds = 0.0
    duration: PositiveSeconds = Field(default=10.0, alias="for")
    every: PositiveSeconds | None = None
    times: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _overlap(self) -> _Step:
        if self.every is not None and self.every < self.duration:
            raise ValueError(f"every: {self.every:g} s is shorter than `for` "
                             f"({self.duration:g} s): injections would overlap; make every "
                             "at least as long as for")
        return self


class _Victims(_Model):
    on: Literal["worker", "router"] = "worker"
    count: int = Field(default=1, ge=1)
    workers: tuple[str, ...] = ()


class ProcessFaultSpec(_Step, _Victims):
    """`process-kill|terminate|pause` of `count` random workers (among `workers`), the router
    (`on: router`), or explicit `pids` of the target."""

    kind: Literal["process-kill", "process-terminate", "process-pause"]
    pids: tuple[Annotated[int, Field(gt=0)], ...] = ()


class AdminParams(_Model):
    """The admin API's fault parameters (targets/reference/faults.py FaultSpec)."""

    latency_s: float | None = Field(default=None, ge=0, le=600)
    delay_s: float | None = Field(default=None, ge=0, le=60)
    probability: float | None = Field(default=None, ge=0, le=1)
    status: Literal[500, 503] | None = None
    seed: int | None = None
    after_tokens: int | None = Field(default=None, ge=0)
    error_frame: bool | None = None
    mb_per_s: float | None = Field(default=None, gt=0, le=10000)
    cap_mb: float | None = Field(default=None, gt=0, le=65536)
    threads: int | None = Field(default=None, ge=1, le=64)


class AdminFaultSpec(_Step, _Victims):
    """`admin-<kind>`: an in-target fault through the admin API, on the router (default) or on
    `count` workers."""

    kind: Literal["admin-latency", "admin-slow_tokens", "admin-error_rate", "admin-hang",
                  "admin-truncate", "admin-memory_leak", "admin-cpu_burn"]
    on: Literal["worker", "router"] = "router"
    params: AdminParams = AdminParams()


class ToxicSpec(_Step):
    """`network-<toxic>`: a toxic on `proxy` of the Toxiproxy-compatible API at `api`."""

    kind: Literal["network-latency", "network-bandwidth", "network-slicer",
                  "network-slow_close", "network-timeout", "network-reset_peer",
                  "network-limit_data", "network-sse_stall", "network-sse_cut",
                  "network-sse_drop_done"]
    api: str = Field(default="http://127.0.0.1:8474", pattern=r"^https?://[^\s/]+")
    proxy: str = Field(default="llm", min_length=1)
    attributes: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    stream: Literal["downstream", "upstream"] = "downstream"
    toxicity: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _attributes(self) -> ToxicSpec:
        known = TOXIC_ATTRIBUTES[self.kind.removeprefix("network-")]
        unknown = sorted(set(self.attributes) - set(known))
        if unknown:
            raise ValueError(f"attributes: {self.kind} has no attribute {unknown[0]!r}; its "
                             f"attributes are {', '.join(known)}")
        return self


class ProxyDownSpec(_Step):
    """`network-down`: the proxy refuses connections until reverted."""

    kind: Literal["network-down"]
    api: str = Field(default="http://127.0.0.1:8474", pattern=r"^https?://[^\s/]+")
    proxy: str = Field(default="llm", min_length=1)


class CpuHogSpec(_Step):
    """`host-cpu-hog`: `processes` busy loops, one CPU each."""

    kind: Literal["host-cpu-hog"]
    processes: int = Field(default=1, ge=1)


class MemoryHogSpec(_Step):
    """`host-memory-hog`: one process holding `mb` MiB."""

    kind: Literal["host-memory-hog"]
    mb: int = Field(default=256, ge=1)


class ContainerFaultSpec(_Step):
    """`container-<action>` on `count` containers named `container` or labelled `label`."""

    kind: Literal["container-kill", "container-pause", "container-restart",
                  "container-disconnect"]
    container: str | None = None
    label: str | None = Field(default=None, pattern=r"^[^=\s]+(=.*)?$")
    count: int = Field(default=1, ge=1)
    network: str | None = None

    @model_validator(mode="after")
    def _selector(self) -> ContainerFaultSpec:
        if (self.container is None) == (self.label is None):
            raise ValueError("container: give exactly one of `container` (a name) or `label` "
                             "(key=value)")
        if self.kind == "container-disconnect" and not self.network:
            raise ValueError("network: container-disconnect needs `network` (the network to "
                             "leave)")
        return self


def _fault_tag(data: Any) -> str | None:
    if isinstance(data, dict):
        kind = data.get("kind")
    elif isinstance(data, BaseModel):
        kind = getattr(data, "kind", None)
    else:
        return None
    if kind is None:
        return None
    if not isinstance(kind, str):
        return repr(kind)
    if kind in ("network-down", "host-cpu-hog", "host-memory-hog"):
        return kind
    # tags are not identifiers, so error paths can tell them from field names
    return kind.split("-", 1)[0] + "-*" if kind in FAULT_KINDS else kind


FaultSpec = Annotated[
    Annotated[ProcessFaultSpec, Tag("process-*")] | Annotated[AdminFaultSpec, Tag("admin-*")]
    | Annotated[ToxicSpec, Tag("network-*")] | Annotated[ProxyDownSpec, Tag("network-down")]
    | Annotated[CpuHogSpec, Tag("host-cpu-hog")]
    | Annotated[MemoryHogSpec, Tag("host-memory-hog")]
    | Annotated[ContainerFaultSpec, Tag("container-*")],
    Discriminator(_fault_tag),
]


class AbortConfig(_Model):
    """Stop the fault schedule early (everything reverted) when the target is down this long."""

    no_live_workers: PositiveSeconds | None = None
    router_unhealthy: PositiveSeconds | None = None


class NemesisConfig(_Model):
    """How the schedule runs: blast radius (most workers affected at once), abort conditions,
    dry run (validate and print the plan, inject nothing)."""

    blast_radius: int | None = Field(default=None, ge=1)
    abort: AbortConfig = AbortConfig()
    dry_run: bool = False


# -- steady state ------------------------------------------------------------------------------

class HttpProbe(_Model):
    """GET `url` (absolute, or a path on the target) answers `status` within `timeout` s."""

    type: Literal["http"] = "http"
    name: str | None = None
    url: str = Field(pattern=r"^(https?://[^\s/]+|/)")
    status: int = Field(default=200, ge=100, le=599)
    timeout: PositiveSeconds = 5.0


class MetricProbe(_Model):
    """A metric of the target's /metrics within [min, max]."""

    type: Literal["metric"] = "metric"
    name: str | None = None
    metric: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    min: float | None = None
    max: float | None = None
    url: str = Field(default="/metrics", pattern=r"^(https?://[^\s/]+|/)")

    @model_validator(mode="after")
    def _bounds(self) -> MetricProbe:
        if self.min is None and self.max is None:
            raise ValueError("max: give `min`, `max` or both (the range the metric must stay in)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min:g} is more than max ({self.max:g})")
        return self


def _probe_tag(data: Any) -> str | None:
    if isinstance(data, dict):
        kind = data.get("type", "metric" if "metric" in data else "http")
    elif isinstance(data, BaseModel):
        kind = getattr(data, "type", None)
    else:
        return None
    if kind in ("http", "metric"):
        return f"probe-{kind}"
    return kind if isinstance(kind, str) else repr(kind)


ProbeSpec = Annotated[
    Annotated[HttpProbe, Tag("probe-http")] | Annotated[MetricProbe, Tag("probe-metric")],
    Discriminator(_probe_tag),
]


# -- report ------------------------------------------------------------------------------------

class ReportConfig(_Model):
    """Where the run directory goes and what is written into it."""

    dir: str = "reports"
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    formats: tuple[Literal["html", "json", "junit", "markdown"], ...] = (
        "html", "json", "junit", "markdown")
    telemetry_interval: PositiveSeconds = 0.5


# -- the experiment ----------------------------------------------------------------------------

class Experiment(_Model):
    """One experiment file. `seed` is None only before `load_experiment` resolves it."""

    name: str | None = None
    description: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    target: TargetConfig
    load: LoadConfig
    faults: tuple[FaultSpec, ...] = ()
    nemesis: NemesisConfig = NemesisConfig()
    steady_state: tuple[ProbeSpec, ...] = ()
    checks: CheckConfig = CheckConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _fits(self) -> Experiment:
        for i, fault in enumerate(self.faults):
            if fault.at >= self.load.duration:
                raise ValueError(f"faults[{i}].at: {fault.at:g} s is not before the end of the "
                                 f"load ({self.load.duration:g} s); make it earlier or make "
                                 "load.duration longer")
            if isinstance(fault, ProcessFaultSpec | AdminFaultSpec) \
                    and self.target.adapter != "reference":
                raise ValueError(f"faults[{i}].kind: {fault.kind} needs the reference target's "
                                 "admin API; use adapter: reference, or another fault kind")
        return self

    def resolved(self) -> dict[str, Any]:
        """The experiment as plain data, every default filled in (what `write_resolved` writes)
        but the reference target's own options where the target is a `url` (given back, they
        would be refused: they mean nothing to a deployment the harness did not start)."""
        data = self.model_dump(mode="json", by_alias=True)
        if self.target.url is not None:
            for name in _REFERENCE_ONLY:
                del data["target"][name]
        return data

    def write_resolved(self, run_dir: Path) -> Path:
        """Write `experiment.yaml` (resolved, with the seed) into `run_dir`; its path."""
        if self.seed is None:
            raise UsageError("the experiment's seed is not resolved; load it with "
                             "load_experiment()")
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / EXPERIMENT_FILE
        text = yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path


# -- loading -----------------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, which hides a typo'd copy-paste)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found the key {key!r} twice", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)

# An experiment file is a few hundred values. Anchors and aliases are allowed (to repeat a
# probe, say), but not past this many values once expanded: a "billion laughs" file is nine
# lines that expand to 10**9 strings, and everything that walks the data would expand it.
MAX_FILE_CHARS = 1_000_000
MAX_VALUES = 100_000


def _load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, refused (UsageError) before it is built when its aliases
    expand to more than MAX_VALUES values or refer to themselves."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count = _expanded_size(node)
        if count is None:
            raise UsageError(f"{source}: an alias refers to its own anchor (a structure that "
                             "contains itself); an experiment must be a tree")
        if count > MAX_VALUES:
            many = f"at least {count}" if count >= 10 * MAX_VALUES else str(count)
            raise UsageError(f"{source}: its anchors and aliases expand to {many} values "
                             f"(at most {MAX_VALUES}); repeat fewer aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int | None:
    """How many values `root` holds once every alias is expanded (each node counted once per
    path to it, memoized per node, so it costs one pass over the file); None for a cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
            else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            on_path.discard(id(node))
            # a huge count needs no exact figure: capped, so the sum stays cheap
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), 10 * MAX_VALUES)
            continue
        if id(node) in on_path:
            return None
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]

_Path = tuple[int | str, ...]


def _where(loc: _Path) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> _Path:
    """`loc` as a path in the user's document: union tags and validator names (parts that are
    no key of the document) dropped."""
    out: list[int | str] = []
    node = data
    for part in loc:
        present = (part in node if isinstance(node, dict)
                   else isinstance(part, int) and 0 <= part < len(node)
                   if isinstance(node, list | tuple) else False)
        if present:
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part.isidentifier():
            out.append(part)  # a missing or unknown key of a mapping
            node = None
        # else: a union tag or a validator's name
    return tuple(out)


def _field_names() -> list[str]:
    names: set[str] = set()
    pending: list[type[BaseModel]] = [Experiment]
    seen: set[type[BaseModel]] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            names.add(name)
        for sub in (ProcessFaultSpec, AdminFaultSpec, ToxicSpec, ProxyDownSpec, CpuHogSpec,
                    MemoryHogSpec, ContainerFaultSpec, HttpProbe, MetricProbe, TargetConfig,
                    LoadConfig, NemesisConfig, AbortConfig, ReportConfig, AdminParams,
                    CheckConfig):
            if sub not in seen:
                pending.append(sub)
    return sorted(names)


def _short(value: Any) -> str:
    text = reprlib.repr(value)  # bounded: never the whole of a large value
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ErrorDetails, data: Any) -> str:
    path = _clean_loc(error["loc"], data)
    kind = error["type"]
    where = _where(path)
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else ""
        close = difflib.get_close_matches(key, _field_names(), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else "; remove it or fix its spelling"
        return f"{where}: unknown field{hint}"
    if kind == "missing":
        return f"{where}: required; add it"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "")
        if path and path[0] == "steady_state":
            return f"{where}.type: unknown probe type {tag!r}; use http or metric"
        close = difflib.get_close_matches(str(tag), FAULT_KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return (f"{where}.kind: unknown fault kind {_short(tag)}{hint}; use one of "
                f"{', '.join(FAULT_KINDS)}")
    if kind == "union_tag_not_found":
        if not isinstance(error["input"], dict):
            what = "kind:" if path and path[0] == "faults" else "type: or url:"
            return f"{where}: must be a mapping with {what} (got {_short(error['input'])})"
        if path and path[0] == "faults":
            return f"{where}.kind: required; add the fault kind, one of {', '.join(FAULT_KINDS)}"
        return f"{where}.type: required; use http or metric"
    msg = error["msg"].removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "must be a mapping (key: value lines)"
    elif kind in ("tuple_type", "list_type"):
        msg = "must be a list"
    if kind in ("value_error", "assertion_error"):
        # a validator's message that starts with `field: ` is about that field
        field = re.match(r"^([a-z_]+): ", msg)
        if field and path:
            return f"{where}.{field.group(1)}: {msg[field.end():]}"
        return msg if not path else f"{where}: {msg}"
    return f"{where}: {msg} (got {_short(error['input'])})"


def _check_keys(data: Any, path: _Path = ()) -> None:
    """UsageError at the first mapping key that is not a string (YAML allows `1:` or `? [a]`)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                raise UsageError(f"{_where(path)}: key {_short(key)} is not a name; every key "
                                 "must be a word such as `target:`")
            _check_keys(value, (*path, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _check_keys(item, (*path, i))


def parse_experiment(text: str, source: str = "<experiment>",
                     overrides: Sequence[str] = ()) -> Experiment:
    """Validate an experiment given as YAML text (`source` names it in errors); the seed is not
    resolved here."""
    if len(text) > MAX_FILE_CHARS:
        raise UsageError(f"{source}: {len(text)} characters; an experiment file is at most "
                         f"{MAX_FILE_CHARS} (is it the right file?)")
    try:
        data = _load_yaml(text, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise UsageError(f"{source}: not valid YAML at {at}: {problem}; fix the syntax "
                         "there") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"{source}: nested too deeply to be an experiment file") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: must be a mapping with `target:` and `load:` (and "
                         f"optionally faults:, steady_state:, checks:, report:), not a "
                         f"{type(data).__name__}")
    _check_keys(data)
    data = apply_overrides(data, overrides)
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _message(errors[0], data)
        origin = _override_for(_clean_loc(errors[0]["loc"], data), overrides)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{source}: {first}{origin}{more}") from exc
    except RecursionError as exc:
        raise UsageError(f"{source}: nested too deeply to be an experiment file") from exc


def _override_for(path: _Path, overrides: Sequence[str]) -> str:
    for item in overrides:
        target = _parse_path(item.partition("=")[0], item)
        if path[:len(target)] == target:
            return f" (set by --set {item})"
    return ""


_SEGMENT = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")


def _parse_path(text: str, item: str) -> _Path:
    path: list[int | str] = []
    for part in text.split("."):
        if not part:
            raise UsageError(f"--set {item}: empty name in the path {text!r}; write it like "
                             "target.model=sim or faults[0].at=5")
        found = list(_SEGMENT.finditer(part))
        if "".join(m.group(0) for m in found) != part:
            raise UsageError(f"--set {item}: cannot read the path {text!r}; write it like "
                             "target.model=sim or faults[0].at=5")
        for m in found:
            path.append(int(m.group(2)) if m.group(2) is not None
                        else int(m.group(1)) if re.fullmatch(r"[0-9]+", m.group(1)) else m.group(1))
    return tuple(path)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `PATH=VALUE` set (VALUE read as YAML: `3` is a number,
    `[a, b]` a list); UsageError naming the override that cannot apply."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        name, eq, raw = item.partition("=")
        if not eq or not name.strip():
            raise UsageError(f"--set {item}: write PATH=VALUE, e.g. --set target.model=sim")
        path = _parse_path(name.strip(), item)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item}: the value is not valid YAML ({exc}); quote it") \
                from exc
        node: Any = out
        for depth, key in enumerate(path):
            last = depth == len(path) - 1
            here = _where(path[:depth + 1])
            if isinstance(key, int):
                if not isinstance(node, list):
                    raise UsageError(f"--set {item}: {_where(path[:depth]) or 'the file'} is "
                                     "not a list, so it has no [index]")
                if not 0 <= key < len(node) + (1 if last else 0):
                    raise UsageError(f"--set {item}: {here}: no such entry ({len(node)} "
                                     f"present; use an index from 0 to {len(node) - 1})")
                if last:
                    if key == len(node):
                        node.append(value)
                    else:
                        node[key] = value
                else:
                    node = node[key]
            else:
                if not isinstance(node, dict):
                    raise UsageError(f"--set {item}: {_where(path[:depth])} is a "
                                     f"{type(node).__name__}, not a mapping, so it has no "
                                     f"field {key!r}")
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {} if isinstance(path[depth + 1], str) else [])
    return out


def load_experiment(path: Path, overrides: Sequence[str] = (), *,
                    draw_seed: Callable[[], int] = lambda: secrets.randbelow(2**31)
                    ) -> Experiment:
    """Read, override (`--set PATH=VALUE`), validate and resolve the experiment in `path`;
    the seed is drawn with `draw_seed` when the file has none."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the experiment file {path}: "
                         f"{exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}); save the experiment "
                         "file as UTF-8 YAML") from exc
    experiment = parse_experiment(text, str(path), overrides)
    if experiment.seed is None:
        experiment = experiment.model_copy(update={"seed": draw_seed()})
    return experiment


def describe(experiment: Experiment) -> Mapping[str, Any]:
    """A short summary for a dry run or a log line."""
    return {"name": experiment.name, "seed": experiment.seed,
            "target": experiment.target.url or f"reference ({experiment.target.model})",
            "duration": experiment.load.duration,
            "faults": [f.kind for f in experiment.faults]}
