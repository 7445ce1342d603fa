"""The experiment file: valid files load, every broken one is a UsageError naming the field (or
the YAML problem), `--set` overrides apply and are checked, the resolved file round-trips."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import UsageError
from harness.experiment import (
    FAULT_KINDS,
    AdminFaultSpec,
    Experiment,
    MetricProbe,
    ProcessFaultSpec,
    ToxicSpec,
    load_experiment,
    parse_experiment,
)
from harness.strategies import (
    BrokenExperiment,
    JsonObject,
    broken_experiments,
    experiment_documents,
)

GAMEDAY = """\
name: gameday
seed: 7
target:
  model: sim
  workers: 2
  min_workers: 1
  max_workers: 4
  memory_limit_mb: 512
  resume_streams: true
load:
  locustfile: scenarios/chat_qa.py
  users: 8
  spawn_rate: 4
  duration: 2m
  arrival: poisson
  rate: 5
faults:
  - kind: process-kill
    at: 10
    for: 5
    count: 1
  - kind: admin-latency
    at: 30s
    for: 10
    every: 20
    times: 2
    params: {latency_s: 0.3}
  - kind: network-latency
    at: 60
    attributes: {latency: 200, jitter: 20}
nemesis:
  blast_radius: 1
  abort: {no_live_workers: 10}
steady_state:
  - url: /health
  - metric: vllm:num_requests_waiting
    max: 0
checks:
  slo:
    ttft: {p95: 1.5}
    error_rate: 0.05
  scaling:
    target_ongoing: 2
report:
  formats: [html, junit]
"""

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def write(tmp_path: Path, text: str | bytes, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_gameday_example_loads(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, GAMEDAY))
    assert exp.seed == 7
    assert exp.target.reference and exp.target.model == "sim"
    assert exp.load.duration == 120.0
    kill, latency, toxic = exp.faults
    assert isinstance(kill, ProcessFaultSpec) and kill.duration == 5.0 and kill.on == "worker"
    assert isinstance(latency, AdminFaultSpec) and latency.at == 30.0
    assert latency.params.latency_s == 0.3 and latency.on == "router"
    assert isinstance(toxic, ToxicSpec) and toxic.attributes == {"latency": 200, "jitter": 20}
    assert isinstance(exp.steady_state[1], MetricProbe)
    assert exp.checks.scaling is not None and exp.checks.scaling.target_ongoing == 2
    assert "--resume-streams" in exp.target.serve_args()
    assert exp.load.locust_args(7)[:2] == ["-f", "scenarios/chat_qa.py"]


def test_url_target_and_drawn_seed(tmp_path: Path) -> None:
    text = "target: {url: 'http://127.0.0.1:9000', adapter: vllm}\nload: {duration: 10}\n"
    exp = load_experiment(write(tmp_path, text), draw_seed=lambda: 1234)
    assert exp.seed == 1234 and not exp.target.reference and exp.target.adapter == "vllm"


def test_resolved_file_round_trips(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, GAMEDAY.replace("seed: 7\n", "")),
                          draw_seed=lambda: 99)
    path = exp.write_resolved(tmp_path / "run")
    resolved = yaml.safe_load(path.read_text())
    assert resolved["seed"] == 99 and resolved["faults"][0]["for"] == 5.0
    assert load_experiment(path) == exp


def test_auto_users_load_round_trip_and_are_sized(tmp_path: Path) -> None:
    closed = GAMEDAY.replace("  arrival: poisson\n  rate: 5\n", "")
    exp = load_experiment(write(tmp_path, closed), ["load.users=auto",
                                                    "load.utilization=0.3",
                                                    "load.max_users=12"])
    assert exp.load.auto_users and exp.load.utilization == 0.3 and exp.load.max_users == 12
    assert exp.load.users == 12  # until measured: the most it may become
    path = exp.write_resolved(tmp_path / "run")
    assert yaml.safe_load(path.read_text())["load"]["users"] == "auto"
    assert load_experiment(path) == exp
    with pytest.raises(UsageError, match=r"load\.users: auto is sized from the target's"):
        exp.load.locust_args(7)  # Locust never gets the placeholder
    sized = exp.load.sized(5)
    assert not sized.auto_users and sized.users == 5 and sized.utilization == 0.3
    assert sized.locust_args(7)[sized.locust_args(7).index("-u") + 1] == "5"
    assert sized.model_dump(mode="json")["users"] == 5
    # a fixed count keeps the defaults of the sizing fields, unused
    assert not load_experiment(write(tmp_path, closed, "fixed.yaml")).load.auto_users


@pytest.mark.parametrize(("load", "names", "says"), [
    ("users: auto, arrival: poisson, rate: 5", "load.users", "needs arrival: closed"),
    ("users: auto, shape: spike, spike_users: 8", "load.users",
     "steady, ramp, step, soak; shape 'spike'"),
    ("users: automatic", "load.users", "a number of users (1 or more) or auto"),
    ("users: auto, utilization: 0", "load.utilization", "greater than 0"),
    ("users: auto, utilization: 1.5", "load.utilization", "less than or equal to 1"),
    ("users: auto, max_users: 0", "load.max_users", "greater than or equal to 1"),
])
def test_bad_auto_users_name_the_field(tmp_path: Path, load: str, names: str,
                                       says: str) -> None:
    with pytest.raises(UsageError) as info:
        load_experiment(write(tmp_path, f"target: {{}}\nload: {{duration: 10, {load}}}\n"))
    assert f"{names}: " in str(info.value) and says in str(info.value)


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, GAMEDAY)
    exp = load_experiment(path, ["target.model=tiny", "faults[0].at=3", "load.users=2",
                                 "faults.1.params.latency_s=0.1", "report.formats=[json]"])
    assert exp.target.model == "tiny" and exp.faults[0].at == 3.0 and exp.load.users == 2
    assert isinstance(exp.faults[1], AdminFaultSpec) and exp.faults[1].params.latency_s == 0.1
    assert exp.report.formats == ("json",)


@pytest.mark.parametrize(("override", "names"), [
    ("target.workers=lots", "target.workers"),
    ("faults[2].at=-4", "faults[2].at"),
    ("faults[0].kind=proces-kill", "faults[0].kind"),
    ("load.duratoin=5", "load.duratoin"),
    ("target.model.name=x", "target.model"),
    ("faults[7].at=1", "faults[7]"),
    ("faults[0].at", "PATH=VALUE"),
    ("=3", "PATH=VALUE"),
    ("target..model=sim", "target..model"),
    ("load.arrival=constant", "load.rate"),
])
def test_bad_override_names_the_path(tmp_path: Path, override: str, names: str) -> None:
    closed = GAMEDAY.replace("  arrival: poisson\n  rate: 5\n", "")
    with pytest.raises(UsageError, match=re.escape(names)):
        load_experiment(write(tmp_path, closed), [override])


@pytest.mark.parametrize(("text", "names"), [
    ("target: {}\nload: {duration: 10}\nfaults:\n- {kind: admin-hang, at: 20}\n",
     "faults[0].at"),
    ("target: {}\nload: {duration: 10}\nfaults:\n- {kind: network-slicer, attributes: "
     "{latency: 1}}\n", "faults[0].attributes"),
    ("target: {}\nload: {duration: 10}\nfaults:\n- {kind: container-kill}\n",
     "faults[0].container"),
    ("target: {url: 'http://h:1', workers: 3}\nload: {duration: 10}\n", "target.workers"),
    ("target: {min_workers: 3, max_workers: 2}\nload: {duration: 10}\n", "target.min_workers"),
    ("target: {}\nload: {duration: 10}\nsteady_state:\n- {metric: vllm:x}\n",
     "steady_state[0].max"),
    ("target: {}\nload: {duration: 10}\ntarget: {}\n", "line 3"),
    ("target: {}\nload: {duration: 10}\nchecks: {slo: {ttft: {p95: -1}}}\n",
     "checks.slo.ttft.p95"),
    ("target: {}\nload: {duration: .nan}\n", "load.duration"),
    ("target: {}\nload: {duration: 10}\nfaults: [7]\n", "faults[0]"),
    ("target: {}\nload: {duration: 10}\n1: x\n", "key 1"),
    ("", "target"),
])
def test_semantic_errors_name_the_field(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(UsageError, match=re.escape(names)):
        load_experiment(write(tmp_path, text))


ENDPOINT = """\
target:
  url: https://gw.example/openai/v1/
  adapter: openai
  headers: {X-Org: " research ", OpenAI-Beta: assistants=v2}
  api_key_env: GATEWAY_KEY
  ca_bundle: /etc/ssl/gw-ca.pem
load: {duration: 10}
"""


def test_endpoint_fields_load_and_round_trip(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, ENDPOINT), draw_seed=lambda: 5)
    cfg = exp.target
    assert cfg.url == "https://gw.example/openai"  # with or without /v1: one base
    assert cfg.headers == {"X-Org": "research", "OpenAI-Beta": "assistants=v2"}
    assert cfg.endpoint_args() == ["--header=X-Org: research",
                                   "--header=OpenAI-Beta: assistants=v2",
                                   "--ca-bundle=/etc/ssl/gw-ca.pem"]
    assert cfg.api_key({"GATEWAY_KEY": "sk-1"}) == "sk-1"
    resolved = yaml.safe_load(exp.write_resolved(tmp_path / "run").read_text())
    assert resolved["target"]["api_key_env"] == "GATEWAY_KEY"  # the name, never the key
    assert resolved["target"]["headers"] == cfg.headers


def test_api_key_env_unset_names_the_variable(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, ENDPOINT))
    with pytest.raises(UsageError, match=r"target.api_key_env: .*GATEWAY_KEY is not set"):
        exp.target.api_key({})
    assert load_experiment(write(tmp_path, "target: {}\nload: {duration: 1}\n")
                           ).target.api_key({}) is None


@pytest.mark.parametrize(("target", "names", "says"), [
    ("{url: 'http://h:1', headers: {'Bad Name': x}}", "target.headers",
     "'Bad Name' is not a header name"),
    ("{url: 'http://h:1', headers: {Content-Length: '3'}}", "target.headers",
     "set by the load client itself"),
    ("{url: 'http://h:1', headers: [X-Org]}", "target.headers", "must be a mapping"),
    ("{url: 'http://h:1', api_key_env: sk-abc123}", "target.api_key_env",
     "must name the environment variable"),
    ("{url: 'http://h:1', api_key: sk-abc123}", "target.api_key",
     "did you mean `api_key_env`?"),
    ("{url: 'http://h:1', insecure: true, ca_bundle: /ca.pem}", "target.insecure",
     "contradicts ca_bundle"),
    ("{url: 'http://h:1/v1?x=1'}", "target.url", "no ?query"),
])
def test_bad_endpoint_fields_name_the_field(tmp_path: Path, target: str, names: str,
                                            says: str) -> None:
    with pytest.raises(UsageError) as info:
        load_experiment(write(tmp_path, f"target: {target}\nload: {{duration: 10}}\n"))
    message = str(info.value)
    assert f"{names}: " in message and says in message, message
    assert "sk-abc123" not in message  # a key pasted into the wrong field is not echoed


def test_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_experiment(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="UTF-8"):
        load_experiment(write(tmp_path, b"target: \xff\xfe"))


def test_every_fault_kind_has_a_model() -> None:
    for kind in FAULT_KINDS:
        extra = ("\n  container: llm" if kind.startswith("container-") else "") + \
                ("\n  network: n" if kind == "container-disconnect" else "")
        exp = parse_experiment(f"target: {{}}\nload: {{duration: 10}}\nfaults:\n- kind: {kind}"
                               f"{extra}\n")
        assert exp.faults[0].kind == kind


@FAST
@given(experiment_documents())
def test_valid_documents_load_and_round_trip(doc: JsonObject) -> None:
    exp = parse_experiment(yaml.safe_dump(doc), "generated")
    assert isinstance(exp, Experiment)
    resolved = exp.model_copy(update={"seed": exp.seed if exp.seed is not None else 1})
    assert parse_experiment(yaml.safe_dump(resolved.resolved())) == resolved


def test_a_deployment_at_a_url_round_trips_without_the_reference_options() -> None:
    """experiment.yaml of a run against a `url` is read back as the same experiment (it once
    carried the reference target's defaults, which the url form refuses)."""
    exp = parse_experiment("seed: 3\ntarget: {url: 'http://127.0.0.1:9/v1', adapter: openai}\n"
                           "load: {duration: 5}\n")
    dumped = exp.resolved()
    assert "workers" not in dumped["target"] and dumped["target"]["adapter"] == "openai"
    assert parse_experiment(yaml.safe_dump(dumped)) == exp


@FAST
@given(broken_experiments())
def test_broken_files_are_usage_errors_naming_the_problem(case: BrokenExperiment) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "broken.yaml"
        path.write_bytes(case.content)
        with pytest.raises(UsageError) as info:
            load_experiment(path)
    message = str(info.value)
    assert str(path) in message
    if case.names is not None:
        assert case.names in message, (case, message)


@FAST
@given(st.text(max_size=40), st.text(max_size=40))
def test_arbitrary_overrides_never_crash(key: str, value: str) -> None:
    try:
        experiment = parse_experiment(GAMEDAY, "gameday.yaml", [f"{key}={value}"])
    except UsageError as exc:  # refused: with a message to act on
        assert str(exc)
    else:
        assert experiment.target is not None
