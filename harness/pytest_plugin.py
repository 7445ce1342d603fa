"""pytest plugin (entry point `pytest11`, loaded wherever the harness is installed): resilience
tests in a user's own CI.

- `reference_target`: a reference fleet started for the test (sim engine unless
  `--llm-chaos-model` or the `llm_chaos_target` marker says otherwise), stopped by PID after it;
  yields a ReferenceTarget (url, admin token, pid, audit log).
- `chaos_run`: `chaos_run(EXP.yaml or dict, set={...}, against=reference_target or URL)` runs
  the experiment like `llm-chaos run` (in this process; Locust and the target in their own) and
  returns a ChaosResult: exit code, overall verdict, each check's verdict, the run directory.

Nothing heavy is imported until a fixture is used: pytest loads this module in every session.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

__all__ = ["ChaosResult", "ReferenceTarget", "chaos_run", "reference_target"]

MARKER = "llm_chaos_target"
READY_TIMEOUT = 600.0  # the first start of the real model converts its GGUF file


@dataclass(frozen=True)
class ReferenceTarget:
    """A running reference fleet: its router URL, admin token, router PID and audit log."""

    url: str
    admin_token: str
    pid: int
    audit_log: Path
    log_path: Path
    model: str

    @property
    def headers(self) -> dict[str, str]:
        """The admin API's authorization header."""
        return {"Authorization": f"Bearer {self.admin_token}"}


@dataclass(frozen=True)
class ChaosResult:
    """What `chaos_run` produced: exit code (0 valid, 1 invalid, 2 bad experiment, 3
    inconclusive), overall verdict, each check's verdict, the run directory and the output."""

    exit_code: int
    verdict: str
    verdicts: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None
    output: str = ""

    @property
    def ok(self) -> bool:
        """Every check valid."""
        return self.exit_code == 0

    def summary(self) -> str:
        """One line per check, the verdict and where the report is."""
        checks = ", ".join(f"{name} {verdict}" for name, verdict in self.verdicts.items())
        where = f"; report: {self.run_dir / 'report.html'}" if self.run_dir else ""
        return f"verdict {self.verdict} (exit {self.exit_code}): {checks or 'no checks'}{where}"

    def assert_valid(self) -> None:
        """Fail the test unless every check is valid, naming the checks that are not."""
        if not self.ok:
            raise AssertionError(f"resilience test failed: {self.summary()}\n"
                                 f"{self.output[-2000:]}")


# -- options and marker ------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-chaos", "LLM chaos harness (reference_target, chaos_run)")
    group.addoption("--llm-chaos-model", default=None, metavar="MODEL",
                    help="engine of the reference target: sim, tiny, smollm2 or a local model "
                    "folder; reference_target's default is sim, and when given it also "
                    "overrides target.model of the experiments chaos_run starts")
    group.addoption("--llm-chaos-report-dir", default=None, metavar="DIR",
                    help="where chaos_run puts run directories (default: the test's tmp_path)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(model=None, workers=2, resume_streams=True, args=()): options "
        "of the reference_target fixture's fleet (args: more `llm-chaos serve` options)")


# -- reference_target --------------------------------------------------------------------------

def _start_reference(model: str, workers: int, resume_streams: bool, args: Sequence[str],
                     logs: Path) -> tuple[Any, ReferenceTarget]:
    from .launcher import start_fleet

    token = secrets.token_urlsafe(16)
    audit = logs / "audit.jsonl"
    logs.mkdir(parents=True, exist_ok=True)
    proc = start_fleet("--model", model, "--workers", str(workers),
                       *(["--resume-streams"] if resume_streams else []), *args,
                       log_path=logs / "target.log", worker_logs=logs, admin_token=token,
                       audit_log=audit)
    return proc, ReferenceTarget(proc.url, token, proc.pid, audit, proc.log_path, model)


def _wait_live(target: ReferenceTarget, want: int, timeout: float) -> None:
    from .errors import TargetError
    from .target import Target

    with Target(target.url, target.admin_token, pid=target.pid) as admin:
        try:
            admin.wait_live(want, timeout)
        except TargetError as exc:
            raise TimeoutError(f"{exc} (log: {target.log_path})") from exc


@pytest.fixture
def reference_target(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceTarget]:
    """A reference fleet for this test (`@pytest.mark.llm_chaos_target(...)` configures it),
    stopped with all its processes (by PID) after the test, or by its guard if pytest dies."""
    marker = request.node.get_closest_marker(MARKER)
    opts: dict[str, Any] = dict(marker.kwargs) if marker else {}
    unknown = sorted(set(opts) - {"model", "workers", "resume_streams", "args"})
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown option {unknown[0]!r}; use "
                                "model, workers, resume_streams or args")
    model = str(opts.get("model") or request.config.getoption("--llm-chaos-model") or "sim")
    workers = int(opts.get("workers", 2))
    from .faults.guard import RunGuard

    # the guard stops the fleet if pytest itself is killed outright (SIGKILL)
    with RunGuard() as guard:
        proc, target = _start_reference(model, workers, bool(opts.get("resume_streams", True)),
                                        [str(a) for a in opts.get("args", ())],
                                        tmp_path_factory.mktemp("reference-target"))
        try:
            guard.track(proc.pid)
            proc.wait_ready(timeout=READY_TIMEOUT)
            _wait_live(target, workers, READY_TIMEOUT)
            yield target
        finally:
            proc.stop()


# -- chaos_run ---------------------------------------------------------------------------------

class _Tee(io.StringIO):
    """Keeps the run's output and passes it on (pytest shows it when the test fails)."""

    def __init__(self, echo: TextIO) -> None:
        super().__init__()
        self.echo = echo

    def write(self, s: str) -> int:
        self.echo.write(s)
        return super().write(s)

    def flush(self) -> None:
        self.echo.flush()


def _overrides(set_: Mapping[str, Any] | Sequence[str]) -> list[str]:
    if isinstance(set_, Mapping):
        # JSON is YAML: the value keeps its type (false, 3, [a, b], "text")
        return [f"{path}={json.dumps(value)}" for path, value in set_.items()]
    return [str(item) for item in set_]


def _document(experiment: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The experiment as a mapping, and its name for messages."""
    from .errors import UsageError
    from .experiment import parse_experiment

    if isinstance(experiment, Mapping):
        return dict(experiment), "<experiment>"
    import yaml

    path = Path(experiment)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the experiment file {path}: "
                         f"{exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        parse_experiment(text, str(path))  # raises the UsageError naming the line
        raise
    if not isinstance(data, dict):
        parse_experiment(text, str(path))  # raises the UsageError saying what it must be
    return data, str(path)


def _aim(data: dict[str, Any], against: ReferenceTarget | str) -> dict[str, Any]:
    """The experiment pointed at a running target: the options of a fleet the harness would
    start are dropped (the running one has its own)."""
    from .experiment import _REFERENCE_ONLY

    target = data.get("target")
    target = {k: v for k, v in target.items() if k not in _REFERENCE_ONLY} \
        if isinstance(target, dict) else {}
    if isinstance(against, ReferenceTarget):
        target.update(url=against.url, adapter="reference", admin_token=against.admin_token)
    else:
        target["url"] = str(against).rstrip("/")
    return {**data, "target": target}


def _verdicts(run_dir: Path) -> dict[str, str]:
    try:
        checks = json.loads((run_dir / "checks.json").read_text(encoding="utf-8"))["checks"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(c["name"]): str(c["verdict"]) for c in checks}


def _run(experiment: str | Path | Mapping[str, Any], set_: Mapping[str, Any] | Sequence[str],
         against: ReferenceTarget | str | None, report_dir: Path, seq: int) -> ChaosResult:
    from .errors import UsageError
    from .experiment import apply_overrides, load_experiment
    from .runner.lifecycle import run_experiment
    from .runner.session import judge_run

    out = _Tee(sys.stdout)
    overrides = _overrides(set_)
    try:
        if against is None and not isinstance(experiment, Mapping):
            path = Path(experiment)
        else:
            data, _source = _document(experiment)
            data = apply_overrides(data, overrides)
            overrides = []
            if against is not None:
                data = _aim(data, against)
            report_dir.mkdir(parents=True, exist_ok=True)
            path = report_dir / f"experiment-{seq}.yaml"
            import yaml

            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        outcome = run_experiment(path, overrides, report_dir=report_dir, out=out)
        if isinstance(against, ReferenceTarget) and not (outcome.run_dir / "audit.jsonl").exists():
            # the fleet's audit log lives with the fixture: bring it in and judge again, the
            # way `llm-chaos check` re-judges a run directory
            from .runner.rundir import copy_audit_log

            if copy_audit_log(against.audit_log, outcome.run_dir):
                print(f"llm-chaos: judged again with the target's audit log "
                      f"({against.audit_log})", file=out)
                outcome = judge_run(load_experiment(path, overrides), outcome.run_dir, out)
    except UsageError as exc:
        print(f"llm-chaos run: {exc}", file=out)
        return ChaosResult(2, "error", {}, None, out.getvalue())
    return ChaosResult(outcome.exit_code, outcome.verdict, _verdicts(outcome.run_dir),
                       outcome.run_dir, out.getvalue())


def _endpoint_overrides(headers: Mapping[str, str] | None, api_key_env: str | None
                        ) -> list[str]:
    """`chaos_run`'s headers and API key variable as overrides of the experiment's target."""
    out = []
    if headers:
        out.append(f"target.headers={json.dumps(dict(headers))}")
    if api_key_env is not None:
        out.append(f"target.api_key_env={json.dumps(api_key_env)}")
    return out


ChaosRun = Callable[..., ChaosResult]


@pytest.fixture
def chaos_run(request: pytest.FixtureRequest, tmp_path: Path) -> ChaosRun:
    """`chaos_run(experiment, set={...}, against=None, report_dir=None, headers=None,
    api_key_env=None)` -> ChaosResult.

    `experiment`: a YAML file or a mapping; `set`: overrides like `llm-chaos run --set`
    ({"target.model": "sim"} or ["target.model=sim"]); `headers` and `api_key_env` set the
    target's (the headers every request carries; the variable that holds its API key);
    `against`: `reference_target` or a URL (the experiment's own options of a started target
    are then dropped, its headers and key kept), else the experiment starts its own
    target as `llm-chaos run` does (on the `--llm-chaos-model` engine when that is given and
    `set` names no model). Every process a run starts is stopped before it returns."""
    option = request.config.getoption("--llm-chaos-report-dir")
    default_dir = Path(option) if option else tmp_path / "llm-chaos"
    model = request.config.getoption("--llm-chaos-model")
    calls = 0

    def run(experiment: str | Path | Mapping[str, Any], *,
            set: Mapping[str, Any] | Sequence[str] = (),
            against: ReferenceTarget | str | None = None,
            report_dir: str | Path | None = None,
            headers: Mapping[str, str] | None = None,
            api_key_env: str | None = None) -> ChaosResult:
        nonlocal calls
        calls += 1
        overrides: Mapping[str, Any] | Sequence[str] = [
            *_overrides(set), *_endpoint_overrides(headers, api_key_env)]
        if against is None and model:
            named = [o.partition("=")[0].strip() for o in _overrides(set)]
            if "target.model" not in named and "target.url" not in named:
                overrides = [f"target.model={model}", *overrides]
        return _run(experiment, overrides, against,
                    Path(report_dir) if report_dir else default_dir, calls)

    return run
