"""The Locust side of the harness: command-line options, per-process state, and records.

`install()` (idempotent; every scenario calls it) registers the options and listeners on
Locust's event bus. Records are built and written off the event loop, in gevent's thread pool.
In distributed mode workers send their records to the master (custom messages), and when the
master stops a test it first asks every worker to stop its users and flush, then waits for all
of them, so the merged history holds one line per request sent.

The LLM table (`llm_stats`: TTFT, ITL, TPOT, output tokens/s) is built from the records this
process writes (the master's merged ones in distributed mode) and shown beside Locust's own:
printed with its console table, as a tab of the web UI, and as `PREFIX_llm.csv` with `--csv`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
from locust import events as locust_events
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CONSOLE_STATS_INTERVAL_SEC, CSV_STATS_INTERVAL_SEC, console_logger

from ..endpoint import API_KEY_ENV, auth_headers, parse_header, resolve_api_key, tls_context
from ..errors import UsageError
from ..runner.rundir import EXPERIMENT_FILE
from . import chaos_plan, plan
from .arrivals import KINDS, ArrivalSchedule, parse_arrival
from .console import install_console
from .datasets import DatasetPrompts
from .llm_stats import COLUMNS, LLMStats
from .plan import locust_experiment
from .records import HistoryWriter, PendingRecord, default_run_dir
from .shapes import SHAPES, ShapeSpec
from .tokens import TokenCounter, load_tokenizer

__all__ = ["LoadgenState", "add_options", "fail_run", "install", "run_in_thread", "state"]

log = logging.getLogger("llm_chaos.loadgen")

MSG_RECORDS = "llm_chaos_records"
MSG_DONE = "llm_chaos_records_done"
MSG_FLUSH = "llm_chaos_flush"
FLUSH_INTERVAL = 0.5
FLUSH_WAIT = 30.0

_installed: set[int] = set()


@dataclass
class LoadgenState:
    """What the users of one Locust process share: options, seed, records, arrivals."""

    environment: Any
    role: str
    seed: int = 0
    run_dir: Path | None = None
    tokenizer: TokenCounter | None = None
    dataset: DatasetPrompts | None = None  # --dataset: the users' prompts
    arrivals: ArrivalSchedule | None = None
    model: str | None = None
    phase: str = "baseline"
    pending: list[PendingRecord] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    writer: HistoryWriter | None = None
    started: int = 0
    recorded: int = 0
    sent_to_master: int = 0
    received: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    user_seq: int = 0
    flusher: Any = None
    statuses: dict[str, int] = field(default_factory=dict)
    cpu_at_start: float | None = None
    cpu_during_test: float | None = None
    test_started: float | None = None  # monotonic, at the last test start
    own_experiment: bool = False  # a plain Locust run: experiment.yaml is this plugin's
    # how to reach the target: extra headers, the API key (never written anywhere), TLS
    headers: list[tuple[str, str]] = field(default_factory=list, repr=False)
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str | None = None
    tls: Any = None
    discovery_error: str | None = None
    discovery_lock: Any = field(default_factory=gevent.lock.Semaphore, repr=False)
    llm: LLMStats = field(default_factory=LLMStats)
    printer: Any = None
    llm_csv_at: float = 0.0
    # one flush at a time: the end's flush waits for the periodic one's batch (built in a
    # thread) before the tables are written, or they missed it (12 of 72 requests once)
    flush_lock: Any = field(default_factory=gevent.lock.Semaphore, repr=False)

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def process_name(self) -> str:
        if self.role == "worker":
            return f"w{self.environment.runner.worker_index}"
        return "local"

    def user_rng(self, user_class: str) -> tuple[random.Random, int]:
        """A seeded RNG per user, independent of spawn order across classes."""
        self.user_seq += 1
        return (random.Random(f"{self.seed}:{self.process_name()}:{user_class}:{self.user_seq}"),
                self.user_seq)

    def add(self, record: PendingRecord) -> None:
        """Queue a finished request's record (cheap; built and written later, off the loop)."""
        self.pending.append(record)
        self.recorded += 1

    # -- flushing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Build pending records in a thread, then write them (or send them to the master)."""
        with self.flush_lock:
            self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            lines = run_in_thread(_build_lines, batch, self.tokenizer)
            if self.role == "worker":
                self.environment.runner.send_message(MSG_RECORDS, lines)
                self.sent_to_master += len(lines)
            else:
                self.lines.extend(lines)
        if self.lines and self.writer is not None:
            out, self.lines = self.lines, []
            for line in out:
                status = line["value"]["status"]
                self.statuses[status] = self.statuses.get(status, 0) + 1
            run_in_thread(self.writer.write, out)
            self.llm.merge(run_in_thread(LLMStats.of, out))
            if time.monotonic() - self.llm_csv_at >= CSV_STATS_INTERVAL_SEC:
                self.write_llm_csv()  # as often as Locust rewrites its own, and at the end

    def loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
            except Exception:  # keep flushing; a broken batch is logged, never silent
                log.exception("writing request records failed")

    def llm_csv_path(self) -> Path | None:
        """`PREFIX_llm.csv` beside Locust's `PREFIX_stats.csv` (with `--csv PREFIX`)."""
        prefix = getattr(self.options, "csv_prefix", None) if self.options is not None else None
        return Path(f"{prefix}_llm.csv") if prefix and self.role != "worker" else None

    def write_llm_csv(self) -> None:
        path = self.llm_csv_path()
        if path is not None:
            self.llm_csv_at = time.monotonic()
            run_in_thread(path.write_text, llm_csv(self.llm))

    def print_llm_table(self) -> None:
        for line in self.llm.console_lines():
            console_logger.info(line)
        console_logger.info("")

    def write_summary(self) -> None:
        if self.run_dir is None or self.writer is None:
            return
        summary = {
            "history": str(self.writer.path), "records": self.writer.count,
            "by_status": self.statuses, "seed": self.seed,
            "records_from_workers": self.received, "workers_done": self.done,
            "requests_started_here": self.started, "written_at": time.time(),
            "cpu_seconds_during_test": self.cpu_during_test,
        }
        run_in_thread(_write_json, self.run_dir / "loadgen.json", summary)


def llm_csv(stats: LLMStats) -> str:
    """The LLM table as CSV text: a header, one row per scenario, then `Aggregated`."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(stats.table())
    return buf.getvalue()


def _build_lines(batch: list[PendingRecord], tokenizer: TokenCounter | None
                 ) -> list[dict[str, Any]]:
    return [r.to_line(tokenizer) for r in batch]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_in_thread(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a real OS thread (gevent's pool): the users' event loop never stalls."""
    return gevent.get_hub().threadpool.apply(fn, args)


def state(environment: Any) -> LoadgenState:
    """The loadgen state of this Locust process (created by `install`'s init listener)."""
    found = getattr(environment, "llm_chaos", None)
    if found is None:
        # Used without install() (e.g. a library user's own Environment): a local default.
        found = LoadgenState(environment, "local")
        environment.llm_chaos = found
    return found


def add_options(parser: Any) -> None:
    """The `llm-chaos` option group of `locust --help` (an `init_command_line_parser` listener)."""
    g = parser.add_argument_group("llm-chaos", "LLM load generation (llm-chaos-harness)")
    g.add_argument("--run-dir", default=None,
                   help="run directory for history.jsonl (default reports/<time>-<pid>)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    g.add_argument("--model", default=None,
                   help="model name to request (default: the first of GET /v1/models)")
    g.add_argument("--header", action="append", default=None, metavar="'NAME: VALUE'",
                   help="send this header with every request, GET /v1/models included "
                   "(repeatable)")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"send `Authorization: Bearer KEY` (default: ${API_KEY_ENV} when set); "
                   "never written to the run directory")
    g.add_argument("--ca-bundle", default=None, metavar="PATH",
                   help="https: trust the CA certificates in this PEM file")
    g.add_argument("--insecure", action="store_true", default=False,
                   help="https: do not verify the server's certificate")
    g.add_argument("--tokenizer", default=None,
                   help="folder with the target model's tokenizer.json, `whitespace` or `none` "
                   "(default: SmolLM2's in $LLM_CHAOS_CACHE or ~/.cache/llm-chaos, when present)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="max_tokens of every request (default: per scenario)")
    g.add_argument("--prompt-tokens", default=None,
                   help="synthetic prompt lengths: N, uniform:LO,HI, normal:MEAN,STD, "
                   "lognormal:MEDIAN,SIGMA (default: per scenario)")
    g.add_argument("--dataset", default=None, metavar="FILE",
                   help="prompts from your file: JSON Lines (one string, {\"prompt\": ...} or "
                   "{\"messages\": [...]} per line) or ShareGPT JSON; token lengths are "
                   "measured with --tokenizer (default: per scenario)")
    g.add_argument("--completions", action="store_true", default=False,
                   help="also run the users marked opt-in (the /v1/completions scenario, which "
                   "chat-only servers reject); naming a user class on the command line works too")
    g.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds without bytes before a request fails (300)")
    g.add_argument("--arrival", default="closed", choices=KINDS,
                   help="closed loop (each user sends when its last answer ended) or open "
                   "loop at --rate: poisson or constant arrivals")
    g.add_argument("--rate", type=float, default=None,
                   help="open-loop requests per second, over all workers")
    g.add_argument("--load-shape", default="steady", choices=SHAPES,
                   help="user-count shape over -u/-r/-t: steady, ramp, step, spike, soak")
    g.add_argument("--ramp-time", type=float, default=10.0, help="ramp: seconds to reach -u")
    g.add_argument("--step-users", type=int, default=1, help="step: users added per step")
    g.add_argument("--step-time", type=float, default=10.0, help="step: seconds per step")
    g.add_argument("--spike-users", type=int, default=0, help="spike: users during the spike")
    g.add_argument("--spike-at", type=float, default=10.0, help="spike: start (s)")
    g.add_argument("--spike-duration", type=float, default=10.0, help="spike: length (s)")
    plan.add_options(g)


def shape_spec(options: Any) -> ShapeSpec:
    """The load shape the command line asked for (validated; raises UsageError)."""
    return ShapeSpec(
        kind=options.load_shape, users=options.num_users or 1,
        spawn_rate=options.spawn_rate or 1.0, run_time=options.run_time or None,
        ramp_time=options.ramp_time, step_users=options.step_users,
        step_time=options.step_time, spike_users=options.spike_users,
        spike_at=options.spike_at, spike_duration=options.spike_duration,
    ).validate()


def install(events: Any = None) -> None:
    """Register the harness's options and listeners on Locust's event bus (once)."""
    events = events or locust_events
    if id(events) in _installed:
        return
    _installed.add(id(events))
    events.init_command_line_parser.add_listener(add_options)
    # the chaos plan chooses the run directory and seed before _on_init opens them
    events.init.add_listener(chaos_plan.on_init)
    events.init.add_listener(_on_init)
    events.test_start.add_listener(_on_test_start)
    events.test_stopping.add_listener(_on_test_stopping)
    events.test_stop.add_listener(_on_test_stop)
    events.quitting.add_listener(_on_quitting)
    events.quit.add_listener(_on_quit)
    events.reset_stats.add_listener(_on_reset_stats)
    chaos_plan.install(events, state)  # after ours: its test_stop judges the flushed records
    # the game-day console (a Chaos tab in the web UI) starts after the plan's session
    events.init.add_listener(_on_init_console)
    events.test_start.add_listener(_on_test_start_console)
    events.init.add_listener(_route_ctrl_c)
    events.init.add_listener(_refresh_loop_clock)  # last of every init listener


def _route_ctrl_c(**_: Any) -> None:
    """Locust stops on Ctrl-C when the KeyboardInterrupt reaches its main greenlet. Python
    raises it in whatever runs when the signal comes, and a thread of ours (the observer,
    monkey-patched into a greenlet) swallowed it: Locust then ran to its time limit. So SIGINT
    is taken by gevent's loop and thrown into the main greenlet, whatever was running. (Left
    alone where SIGINT is ignored or already handled by someone else.)"""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        gevent.signal_handler(signal.SIGINT, _interrupt_main)


def _interrupt_main() -> None:
    gevent.get_hub().parent.throw(KeyboardInterrupt)  # the hub's parent: the main greenlet


def _refresh_loop_clock(**_: Any) -> None:
    """libev times a timer from the loop's cached clock, last read before this process's
    blocking start-up (imports, tokenizer, dataset, plan): refreshed here, or Locust's
    `--run-time` timer, armed next, fires that much early (a `-t 3s` run on a busy machine
    sent requests for 0.1 s)."""
    gevent.get_hub().loop.update_now()


def _on_init(environment: Any, **_: Any) -> None:
    # httpx logs every request at INFO: noise in Locust's output, and CPU on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Lines are built and written in real threads beside the users' greenlets, which read the
    # clock as each token arrives: a thread keeps the GIL up to the switch interval (5 ms by
    # default) before the hub gets it back, a delay every recorded timing would carry.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    runner = environment.runner
    role = ("master" if isinstance(runner, MasterRunner)
            else "worker" if isinstance(runner, WorkerRunner) else "local")
    st = LoadgenState(environment, role)
    environment.llm_chaos = st
    opts = environment.parsed_options
    if opts is None:
        return
    try:
        if role != "worker":
            shape_spec(opts)
            if opts.arrival != "closed" and not opts.rate:
                raise UsageError(f"--arrival {opts.arrival} needs --rate R")
        _configure(st, opts)
    except UsageError as exc:
        log.error("llm-chaos: %s", exc)
        raise SystemExit(2) from exc
    if role != "worker":
        _drop_opt_in_users(environment, opts)
        _extend_web_ui(environment, st)
        _LAST.append(st)
    if role == "master":
        runner.register_message(MSG_RECORDS, _master_records(st))
        runner.register_message(MSG_DONE, _master_done(st))
    elif role == "worker":
        runner.register_message(MSG_FLUSH, _worker_flush(st))


# the state of the process's last init: `quit` and `reset_stats` carry no environment
_LAST: list[LoadgenState] = []


def _on_init_console(environment: Any, **_: Any) -> None:
    # after _on_init: the run directory is chosen, the LLM tab added
    if getattr(environment, "web_ui", None) is None or state(environment).role == "worker":
        return
    install_console(environment, state(environment).run_dir)


def _on_test_start_console(environment: Any, **_: Any) -> None:
    console = getattr(environment, "llm_chaos_console", None)
    if console is not None:
        console.start()


def _drop_opt_in_users(environment: Any, opts: Any) -> None:
    """Leave out users marked `opt_in` unless asked for (`--completions`, or named)."""
    if getattr(opts, "completions", False) or getattr(opts, "user_classes", None):
        return
    classes = environment.user_classes
    kept = [u for u in classes if not getattr(u, "opt_in", False)]
    if not kept or len(kept) == len(classes):
        return  # only opt-in users (their own file was named), or none of them
    dropped = sorted(u.__name__ for u in classes if u not in kept)
    log.info("llm-chaos: not running %s (opt-in: chat-only servers have no /v1/completions); "
             "add --completions or name the class on the command line to run it",
             ", ".join(dropped))
    classes[:] = kept


_WEB_KEYS = ("name", "requests", "failures", "ttft50", "ttft95", "ttft99", "itl50", "itl95",
             "itl99", "tpot50", "tpot95", "tokens", "tokensPerSecond")


def _extend_web_ui(environment: Any, st: LoadgenState) -> None:
    """A `LLM` tab in Locust's web UI (Locust's documented extension points) and its CSV."""
    web_ui = getattr(environment, "web_ui", None)
    if web_ui is None:
        return
    from flask import Response, request  # Locust's web UI is Flask

    web_ui.template_args["extended_tabs"] = [{"title": "LLM", "key": "llm"}]
    web_ui.template_args["extended_tables"] = [{"key": "llm", "structure": [
        {"key": k, "title": t} for k, t in zip(_WEB_KEYS, COLUMNS, strict=True)]}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./llm-chaos/stats/llm.csv", "title": "Download LLM statistics CSV"}]

    def add_llm_stats(response: Any) -> Any:
        if request.path != "/stats/requests" or not response.is_json:
            return response
        rows = [dict(zip(_WEB_KEYS, row, strict=True)) for row in st.llm.table()]
        body = {**response.json, "extended_stats": [{"key": "llm", "data": rows}]}
        response.set_data(json.dumps(body))
        return response

    def llm_stats_csv() -> Any:
        return Response(llm_csv(st.llm), mimetype="text/csv", headers={
            "Content-Disposition": "attachment;filename=llm_stats.csv"})

    web_ui.app.after_request(add_llm_stats)
    web_ui.app.add_url_rule("/llm-chaos/stats/llm.csv", view_func=llm_stats_csv)


def _endpoint(st: LoadgenState, opts: Any) -> None:
    """Headers, API key and TLS settings from the options (UsageError naming the bad one)."""
    headers = [parse_header(h) for h in getattr(opts, "header", None) or ()]
    key, source = resolve_api_key(getattr(opts, "api_key", None))
    if source != "--api-key" and any(n.lower() == "authorization" for n, _ in headers):
        key, source = None, None  # an Authorization header given here wins over the env's key
    auth_headers(headers, key)  # refuses --api-key together with an Authorization header
    st.headers, st.api_key, st.api_key_source = headers, key, source
    st.tls = tls_context(getattr(opts, "ca_bundle", None), bool(getattr(opts, "insecure", False)))


def _configure(st: LoadgenState, opts: Any) -> None:
    st.seed = opts.seed
    _endpoint(st, opts)
    if st.role != "master":
        st.tokenizer = load_tokenizer(opts.tokenizer)
    if getattr(opts, "dataset", None):
        if opts.prompt_tokens:
            raise UsageError("--dataset and --prompt-tokens both say where prompts come from; "
                             "give one")
        st.dataset = DatasetPrompts(Path(opts.dataset), st.tokenizer)  # a bad file: exit 2
    st.model = opts.model
    if st.role != "worker":
        st.run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir()
        st.writer = HistoryWriter(st.run_dir)
        # `llm-chaos run` or a --chaos-plan writes the experiment; a plain run writes its own
        # at each test's end (plan.locust_experiment), when its host and length are known
        st.own_experiment = not (st.run_dir / EXPERIMENT_FILE).exists() and not getattr(
            opts, "chaos_plan", None)
        log.info("llm-chaos: records go to %s", st.writer.path)


def _on_test_start(environment: Any, **_: Any) -> None:
    st = state(environment)
    opts = environment.parsed_options
    if st.role != "master" and opts is not None:
        rate = opts.rate
        if st.role == "worker" and rate:
            rate = rate / max(1, int(getattr(opts, "expect_workers", 1) or 1))
        st.arrivals = parse_arrival(opts.arrival, rate,
                                    random.Random(f"{st.seed}:arrivals:{st.process_name()}"))
        st.model = opts.model or st.model
        if st.role == "worker":
            # the master's options replace a worker's own at test start
            try:
                _endpoint(st, opts)
            except UsageError as exc:
                fail_run(environment, str(exc))
    if st.flusher is None:
        st.flusher = gevent.spawn(st.loop)
    if (st.printer is None and st.role != "worker" and opts is not None
            and (getattr(opts, "headless", False) or getattr(opts, "print_stats", False))
            and not getattr(opts, "only_summary", False)):
        st.printer = gevent.spawn(_print_loop, st)  # beside Locust's own console table
    st.cpu_at_start = time.process_time()
    st.test_started = time.monotonic()


def _print_loop(st: LoadgenState) -> None:
    while True:
        gevent.sleep(CONSOLE_STATS_INTERVAL_SEC)
        if st.llm.total.requests:
            st.print_llm_table()


def fail_run(environment: Any, message: str) -> None:
    """Log `message` and end this Locust process with exit status 2 (a usage error)."""
    log.error("llm-chaos: %s", message)
    environment.process_exit_code = 2
    runner = environment.runner
    if runner is not None:
        gevent.spawn(runner.quit)  # not from the caller's greenlet: quit() kills the users


def _on_test_stopping(environment: Any, **_: Any) -> None:
    st = state(environment)
    if st.role != "master":
        return
    runner = environment.runner
    workers = [c.id for c in runner.clients.all]
    st.done = {}
    for worker in workers:
        runner.send_message(MSG_FLUSH, None, client_id=worker)
    deadline = time.monotonic() + FLUSH_WAIT
    while time.monotonic() < deadline and not all(w in st.done for w in workers):
        gevent.sleep(0.05)
    missing = [w for w in workers if w not in st.done]
    if missing:
        log.error("llm-chaos: no final records from workers %s", ", ".join(missing))


def _on_test_stop(environment: Any, **_: Any) -> None:
    st = state(environment)
    if st.cpu_at_start is not None:
        # this process's CPU while users ran (the master's own, in distributed mode)
        st.cpu_during_test = time.process_time() - st.cpu_at_start
    st.flush()
    if st.role == "worker":
        environment.runner.send_message(MSG_DONE, {"records": st.sent_to_master,
                                                   "started": st.started})
    else:
        st.write_summary()
        _write_experiment(environment, st)


def _write_experiment(environment: Any, st: LoadgenState) -> None:
    """A plain Locust run's experiment.yaml: what this test ran (the run directory's one
    shape); a run under `llm-chaos run` or a --chaos-plan has its experiment's already."""
    opts = environment.parsed_options
    if not st.own_experiment or st.run_dir is None or opts is None or not environment.host:
        return
    ran = time.monotonic() - st.test_started if st.test_started is not None else 0.0
    try:
        locust_experiment(opts, host=environment.host, model=st.model, seed=st.seed,
                          header_names=[name for name, _ in st.headers],
                          api_key_source=st.api_key_source, duration=ran,
                          ).write_resolved(st.run_dir)
    except (ValueError, UsageError) as exc:  # the records are written; say what is missing
        log.error("llm-chaos: experiment.yaml not written: %s", exc)


def _on_quitting(environment: Any, **_: Any) -> None:
    st = state(environment)
    st.flush()
    if st.printer is not None:
        st.printer.kill(block=False)
    if st.role != "worker":
        st.write_summary()
        st.write_llm_csv()
        if st.llm_csv_path() is not None:
            # Locust rewrites PREFIX_stats.csv every CSV_STATS_INTERVAL_SEC and not again at
            # exit, so it could miss the last requests (locustio/locust#2299): give it a turn.
            gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
        if st.writer is not None:
            log.info("llm-chaos: %d request records in %s", st.writer.count, st.writer.path)


def _on_quit(**_: Any) -> None:
    # after Locust's final table (printed between `quitting` and `quit`), as its companion
    st = _LAST[-1] if _LAST else None
    # (with --json, stdout is Locust's JSON alone)
    if (st is not None and st.role != "worker" and st.options is not None
            and not getattr(st.options, "json", False)):
        st.print_llm_table()


def _on_reset_stats(**_: Any) -> None:
    if _LAST:
        _LAST[-1].llm.reset()


def _master_records(st: LoadgenState) -> Any:
    def handle(environment: Any, msg: Any, **_: Any) -> None:
        lines = msg.data or []
        st.received[msg.node_id] = st.received.get(msg.node_id, 0) + len(lines)
        st.lines.extend(lines)
    return handle


def _master_done(st: LoadgenState) -> Any:
    def handle(environment: Any, msg: Any, **_: Any) -> None:
        st.done[msg.node_id] = int((msg.data or {}).get("records", 0))
    return handle


def _worker_flush(st: LoadgenState) -> Any:
    def handle(environment: Any, msg: Any, **_: Any) -> None:
        # Stopping the users ends their requests (recorded as interrupted) and fires test_stop,
        # which sends the last records and then `done`.
        if environment.runner.state in ("spawning", "running"):
            environment.runner.stop()
        else:
            _on_test_stop(environment)
    return handle
