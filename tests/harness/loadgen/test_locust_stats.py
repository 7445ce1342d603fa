"""Acceptance (issue 18): Locust's own stats count each request once, and the LLM figures (TTFT,
ITL, TPOT, output tokens/s) are in `--csv` output and the console; `locust -f scenarios/
--help` lists the llm-chaos options."""

from __future__ import annotations

import csv
import subprocess
from datetime import datetime
from pathlib import Path

from harness.launcher import ServerProcess

from .conftest import LOCUST, LOCUSTFILES, ROOT, RunLocust, locust_env


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def test_aggregated_row_counts_each_request_once(sim_worker: ServerProcess,
                                                 run_locust: RunLocust, tmp_path: Path) -> None:
    prefix = tmp_path / "csv" / "run"
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "3", "-r",
                     "3", "-t", "3s", "--host", sim_worker.url, "--model", "sim",
                     "--csv", str(prefix))
    assert run.code == 0, run.output[-3000:]
    # the load lasted its -t: the timer is not shortened by the start-up before it (libev's
    # cached loop clock; on a busy machine 3 s became 0.1 s)
    stamps = {what: datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
              for line in run.output.splitlines()
              for what in ("Run time limit set", "--run-time limit reached") if what in line}
    lasted = stamps["--run-time limit reached"] - stamps["Run time limit set"]
    assert lasted.total_seconds() >= 2.9, lasted
    # Users stopped mid-request fire no request event (their records say `interrupted`).
    answered = [r for r in run.records() if r["value"]["status"] != "interrupted"]
    assert len(answered) > 10, run.output[-3000:]

    stats = _rows(Path(f"{prefix}_stats.csv"))
    assert set(stats) == {"chat", "Aggregated"}, stats.keys()  # no `chat:ttft` entries
    assert int(stats["Aggregated"]["Request Count"]) == len(answered)
    assert int(stats["chat"]["Request Count"]) == len(answered)
    # response_length is the request's output tokens (8 per request here)
    tokens = sum(r["value"]["output_tokens"] for r in answered)
    assert float(stats["chat"]["Average Content Size"]) == tokens / len(answered) == 8

    llm = _rows(Path(f"{prefix}_llm.csv"))
    assert set(llm) == {"plain", "Aggregated"}, llm.keys()
    total = llm["Aggregated"]
    assert int(total["Request Count"]) == len(answered)
    assert int(total["Failure Count"]) == 0
    assert int(total["Output Tokens"]) == tokens
    # the simulated engine: TTFT 50 ms, ITL 10 ms (TPOT close to ITL); medians only are
    # bounded above (tails stretch on a busy machine)
    assert 40 < float(total["TTFT 50% (ms)"]) < 200, total
    for column in ("ITL 50% (ms)", "TPOT 50% (ms)"):
        assert 5 < float(total[column]) < 100, (column, total)
    def ms(column: str) -> float:
        return float(total[column])

    assert ms("ITL 50% (ms)") <= ms("ITL 95% (ms)") <= ms("ITL 99% (ms)"), total
    assert ms("TPOT 50% (ms)") <= ms("TPOT 95% (ms)"), total
    assert float(total["Output Tokens/s"]) > 0
    # the same table is printed beside Locust's own
    assert "LLM stats" in run.output and "ITL50" in run.output, run.output[-3000:]


def test_help_lists_our_options() -> None:
    out = subprocess.run([LOCUST, "-f", str(ROOT / "scenarios"), "--help"], cwd=ROOT,
                         env=locust_env(), capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    for option in ("--max-tokens", "--run-dir", "--api-key", "--completions", "--load-shape"):
        assert option in out.stdout, option
