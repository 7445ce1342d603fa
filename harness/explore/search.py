"""The search: Hypothesis draws fault schedules (harness/strategies.py), each one is run as a
short `llm-chaos run` of the base experiment with that `faults:` list, and the run's checks
are the property. A run with an invalid check is a counterexample; Hypothesis shrinks it
(fewer, earlier, shorter faults, first kinds first) and the smallest schedule that still fails
the same check is written as an experiment file that `llm-chaos run` replays.

Each example is a fresh target, Locust and injector (no state carried between examples), with
every time relative to the load's start and every RNG seeded from the search's seed, so one
example replays as itself. A live run is still not a pure function, so each distinct schedule
is run once and its verdict remembered: Hypothesis' replays of a schedule get the same answer.
After `budget` seconds, or `max_shrinks` runs after the first failure, no new example starts; a
failure found by then is still shrunk only as far as the examples already run allow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from hypothesis import HealthCheck, Phase, Verbosity, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from ..errors import UsageError
from ..experiment import Experiment, apply_overrides, parse_experiment
from ..strategies import SCHEDULE_KINDS, JsonObject, fault_schedules, load_profiles

__all__ = ["Example", "ExploreResult", "ExploreSettings", "explore"]

REPRODUCER = "minimal.yaml"


@dataclass(frozen=True)
class ExploreSettings:
    """How far to search: examples, the seed of every RNG, the wall-clock budget (seconds, the
    whole search), the runs shrinking may take and what a schedule may hold."""

    max_examples: int = 10
    seed: int = 0
    budget: float | None = None
    max_shrinks: int | None = None
    max_faults: int = 3
    kinds: tuple[str, ...] = SCHEDULE_KINDS
    vary_load: bool = False


@dataclass(frozen=True)
class Example:
    """One schedule that was run, and what its checks said."""

    index: int
    faults: tuple[JsonObject, ...]
    load: JsonObject | None
    run_dir: Path
    exit_code: int
    invalid: tuple[str, ...]
    summary: str
    seconds: float

    @property
    def failed(self) -> bool:
        return bool(self.invalid)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "faults": list(self.faults), "load": self.load,
                "run_dir": str(self.run_dir), "exit_code": self.exit_code,
                "invalid": list(self.invalid), "summary": self.summary,
                "seconds": round(self.seconds, 2)}


@dataclass
class ExploreResult:
    """The search's outcome: every example run, the smallest failing one and its reproducer."""

    search_dir: Path
    seed: int
    examples: list[Example] = field(default_factory=list)
    first_failure: Example | None = None
    minimal: Example | None = None
    reproducer: Path | None = None
    budget_spent: bool = False
    shrinks_spent: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """1 when a failing schedule was found, else 0."""
        return 1 if self.minimal is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {"search_dir": str(self.search_dir), "seed": self.seed,
                "examples_run": len(self.examples), "budget_spent": self.budget_spent,
                "shrinks_spent": self.shrinks_spent,
                "seconds": round(self.seconds, 1),
                "first_failure": None if self.first_failure is None
                else self.first_failure.index,
                "minimal": None if self.minimal is None else self.minimal.to_json(),
                "reproducer": None if self.reproducer is None else str(self.reproducer),
                "examples": [e.to_json() for e in self.examples]}


def _describe(faults: Sequence[JsonObject]) -> str:
    def one(f: JsonObject) -> str:
        where = f.get("workers") or f.get("on") or ""
        return f"{f['kind']}@{f['at']:g}s/{f['for']:g}s{' ' + str(where) if where else ''}"

    return ", ".join(one(f) for f in faults) or "no faults"


def _key(faults: Sequence[JsonObject], load: JsonObject | None) -> str:
    return json.dumps([list(faults), load], sort_keys=True)


class _Search:
    """Runs examples for Hypothesis and remembers them."""

    def __init__(self, base: dict[str, Any], config: ExploreSettings, search_dir: Path,
                 out: TextIO) -> None:
        self.base = base
        self.config = config
        self.search_dir = search_dir
        self.out = out
        self.result = ExploreResult(search_dir, config.seed)
        self.seen: dict[str, Example] = {}
        self.started = time.monotonic()
        self.failing: frozenset[str] | None = None  # the checks the first failure broke

    def document(self, faults: Sequence[JsonObject], load: JsonObject | None,
                 run_id: str | None) -> dict[str, Any]:
        """The base experiment with this schedule (and load), the search's seed and run id."""
        doc = copy.deepcopy(self.base)
        doc["faults"] = [dict(f) for f in faults]
        if load is not None:
            doc["load"] = {**doc.get("load", {}), **load}
        doc["seed"] = self.config.seed
        report = dict(doc.get("report") or {})
        report.pop("run_id", None)
        if run_id is not None:
            report["run_id"] = run_id
        doc["report"] = report
        return doc

    def run(self, faults: Sequence[JsonObject], load: JsonObject | None) -> Example | None:
        """The example for this schedule: remembered, or run now (None: the budget or the
        shrink limit is spent)."""
        key = _key(faults, load)
        if key in self.seen:
            return self.seen[key]
        index = len(self.result.examples) + 1
        budget = self.config.budget
        if budget is not None and time.monotonic() - self.started >= budget:
            self.result.budget_spent = True
            return None
        first, limit = self.result.first_failure, self.config.max_shrinks
        if first is not None and limit is not None and index - 1 - first.index >= limit:
            self.result.shrinks_spent = True
            return None
        from ..runner.lifecycle import run_experiment

        name = f"example-{index:03d}"
        path = self.search_dir / "examples" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.document(faults, load, name), sort_keys=False),
                        encoding="utf-8")
        t0 = time.monotonic()
        with open(self.search_dir / "examples" / f"{name}.log", "w", encoding="utf-8") as log:
            outcome = run_experiment(path, report_dir=self.search_dir / "runs", out=log)
        checks = json.loads((outcome.run_dir / "checks.json").read_text(encoding="utf-8"))
        invalid = tuple(c["name"] for c in checks.get("checks", [])
                        if c.get("verdict") == "invalid")
        summary = "; ".join(f"{c['name']}: {c.get('summary', '')}"
                            for c in checks.get("checks", []) if c["name"] in invalid)
        example = Example(index, tuple(faults), load, outcome.run_dir, outcome.exit_code,
                          invalid, summary, time.monotonic() - t0)
        self.seen[key] = example
        self.result.examples.append(example)
        verdict = f"INVALID ({summary})" if invalid else f"ok (exit {outcome.exit_code})"
        print(f"  example {index:>3} [{example.seconds:4.1f}s] {_describe(faults)}"
              + (f" | load {load}" if load else "") + f" -> {verdict}", file=self.out,
              flush=True)
        return example

    def fails(self, drawn: tuple[list[JsonObject], JsonObject | None]) -> bool:
        """The property's negation: this schedule breaks a check (the same one as the first
        failure, once there is one, so shrinking cannot slip to another bug)."""
        faults, load = drawn
        example = self.run(faults, load)
        if example is None or not example.failed:
            return False
        if self.failing is None:
            self.failing = frozenset(example.invalid)
            self.result.first_failure = example
            print(f"  found a failing schedule ({len(faults)} fault(s)); shrinking",
                  file=self.out, flush=True)
            return True
        return bool(self.failing & set(example.invalid))


    def one_minimal(self, example: Example) -> Example:
        """`example` with every fault dropped whose absence still fails the same check.
        Hypothesis' shrinker can stop at a local minimum (dropping one fault may need another
        to move first); this pass costs at most one run per fault, and runs within the budget
        like every other example."""
        smallest = example
        dropped = True
        while dropped and len(smallest.faults) > 1:
            dropped = False
            for i in range(len(smallest.faults)):
                fewer = [*smallest.faults[:i], *smallest.faults[i + 1:]]
                if self.fails((fewer, smallest.load)):
                    smallest = self.seen[_key(fewer, smallest.load)]
                    dropped = True
                    break
        return smallest


def _base(path: Path, overrides: Sequence[str]) -> tuple[dict[str, Any], Experiment]:
    """The experiment file as data (overrides applied) and validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the experiment file {path}: {exc}") from exc
    experiment = parse_experiment(text, str(path), overrides)
    if not experiment.target.reference:
        raise UsageError("target.url: explore starts the reference target for every example; "
                         "remove `url` (the search injects process faults into its workers)")
    data = yaml.safe_load(text)  # parse_experiment read it already: a mapping
    return apply_overrides(data, overrides), experiment


def _strategy(experiment: Experiment, config: ExploreSettings
              ) -> st.SearchStrategy[tuple[list[JsonObject], JsonObject | None]]:
    duration = experiment.load.duration
    faults = fault_schedules(duration, config.kinds, max_faults=config.max_faults,
                             max_count=experiment.nemesis.blast_radius or 1)
    load: st.SearchStrategy[JsonObject | None] = (
        load_profiles(duration, max_users=max(1, experiment.load.users))
        if config.vary_load else st.none())
    return st.tuples(faults, load)


def _write_reproducer(search: _Search, example: Example, source: Path) -> Path:
    doc = search.document(example.faults, example.load, None)
    doc["name"] = f"{doc.get('name') or source.stem}-minimal"
    path = search.search_dir / REPRODUCER
    header = (f"# The smallest failing schedule `llm-chaos explore {source}` found (seed "
              f"{search.config.seed}).\n"
              f"# It broke: {example.summary}\n"
              f"# Replay it: llm-chaos run {path}\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def explore(path: Path, overrides: Sequence[str] = (), config: ExploreSettings | None = None,
            *, out_dir: Path | None = None, out: TextIO | None = None) -> ExploreResult:
    """Search fault schedules for the experiment in `path`; write `search.json` and, when a
    schedule fails a check, the smallest one as `minimal.yaml` into the search directory."""
    config = config or ExploreSettings()
    out = out or sys.stdout
    if config.max_examples < 1 or config.max_faults < 1:
        raise UsageError("--max-examples and --max-faults must be at least 1")
    if config.max_shrinks is not None and config.max_shrinks < 0:
        raise UsageError("--max-shrinks must be 0 or more")
    if config.budget is not None and config.budget <= 0:
        raise UsageError("--budget must be more than 0 seconds")
    base, experiment = _base(path, overrides)
    probe = [{"kind": kind, "at": 0.0, "for": 1.0} for kind in config.kinds]
    try:  # every kind the search may draw fits this experiment (e.g. its adapter)
        parse_experiment(yaml.safe_dump({**base, "faults": probe}), str(path))
    except UsageError as exc:
        raise UsageError(f"--kinds: {exc}") from exc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    search_dir = out_dir or Path(experiment.report.dir) / (
        f"explore-{stamp}-{experiment.name or path.stem}-{config.seed}")
    if search_dir.exists() and any(search_dir.iterdir()):
        raise UsageError(f"--out: {search_dir} exists and is not empty; choose another")
    search_dir.mkdir(parents=True, exist_ok=True)
    search = _Search(base, config, search_dir, out)
    budget = f"{config.budget:g} s" if config.budget is not None else "no time limit"
    print(f"llm-chaos explore: {path} seed {config.seed}, at most {config.max_examples} "
          f"example(s), budget {budget}, kinds {', '.join(config.kinds)} -> {search_dir}",
          file=out, flush=True)
    found: tuple[list[JsonObject], JsonObject | None] | None = None
    with contextlib.suppress(NoSuchExample):
        found = find(_strategy(experiment, config), search.fails,
                     settings=settings(max_examples=config.max_examples, database=None,
                                       deadline=None, phases=(Phase.generate, Phase.shrink),
                                       suppress_health_check=list(HealthCheck),
                                       verbosity=Verbosity.quiet),
                     random=random.Random(config.seed))
    result = search.result
    result.seconds = time.monotonic() - search.started
    if found is not None:
        result.minimal = search.one_minimal(search.seen[_key(*found)])
        result.reproducer = _write_reproducer(search, result.minimal, path)
    (search_dir / "search.json").write_text(json.dumps(result.to_json(), indent=2) + "\n",
                                            encoding="utf-8")
    spent = (" (budget spent)" if result.budget_spent else "") + (
        f" (shrink limit of {config.max_shrinks} run(s) reached)" if result.shrinks_spent else "")
    print(f"llm-chaos explore: {len(result.examples)} example(s) run in "
          f"{result.seconds:.0f} s{spent}", file=out)
    if result.minimal is None:
        print("  no schedule broke a check", file=out, flush=True)
    else:
        first = result.first_failure
        print(f"  first failure: example {first.index if first else '?'} "
              f"({len(first.faults) if first else '?'} fault(s)); smallest: example "
              f"{result.minimal.index}: {_describe(result.minimal.faults)}\n"
              f"  it breaks: {result.minimal.summary}\n"
              f"  replay: llm-chaos run {result.reproducer}", file=out, flush=True)
    return result
