"""The reporter and `llm-chaos check`: files, their structure, exit codes, idempotence."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import xmlschema

from harness.cli import main
from tests.harness.checks.rundir import RunBuilder

FILES = ("checks.json", "summary.json", "junit.xml", "summary.md", "report.html")
SLO_YAML = """\
slo:
  ttft: {p95: 0.5}
  error_rate: 0.05
recovery: {window: 2, max_time: 5}
scaling: {target_ongoing: 2, up_within: 3, down_within: 5, sustain: 0.5}
"""


def _run(tmp_path: Path, *, broken: bool = False, only: str | None = None) -> Path:
    b = RunBuilder(tmp_path / "run")
    b.probe(-1, "before", True)
    b.load(0, 10, rate=10)
    b.load(10, 15, rate=10, status="error_frame")
    b.load(15, 30, rate=10, status="http_error" if broken else "ok")
    b.fault(10, 15)
    for t in range(31):
        b.sample(t, 2, ongoing=4, rss_mb=300 + t)
    b.probe(31, "after", True)
    b.audit_log()
    path = b.write()
    (tmp_path / "checks.yaml").write_text(SLO_YAML + (f"checks: [{only}]\n" if only else ""))
    return path


def _check(tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", str(run), "--config", str(tmp_path / "checks.yaml")])
    return code, capsys.readouterr().out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.imgs.append(value or "")
            if name in ("src", "href", "action", "data", "poster") and value:
                self.urls.append(value)


def test_check_writes_every_file_and_exits_by_verdict(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    code, out = _check(tmp_path, run, capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checks"]["slo"]["verdict"] == "valid", out
    assert summary["checks"]["recovery"]["verdict"] == "valid", out
    assert summary["checks"]["audit"]["verdict"] == "valid", out
    assert summary["checks"]["steady_state"]["verdict"] == "valid", out
    # a steady 2 requests per worker (the target) never called for scaling: not exercised
    assert summary["checks"]["scaling"]["verdict"] == "unknown"
    assert code == 3 and summary["exit_code"] == 3
    assert "verdict: unknown (exit 3)" in out and "recovery" in out
    for name in FILES:
        assert (run / name).stat().st_size > 0, name


def test_exit_codes_0_1_and_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _run(tmp_path / "good", only="slo")
    assert _check(tmp_path / "good", good, capsys)[0] == 0
    bad = _run(tmp_path / "bad", broken=True)
    code, out = _check(tmp_path / "bad", bad, capsys)
    assert code == 1 and "invalid" in out
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_bad_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    (tmp_path / "checks.yaml").write_text("recovery: {window: 0}\n")
    assert main(["check", str(run), "--config", str(tmp_path / "checks.yaml")]) == 2
    assert "recovery.window" in capsys.readouterr().err


def test_rechecking_gives_the_same_verdicts_and_files(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, broken=True)
    first_code, _ = _check(tmp_path, run, capsys)
    first = {name: (run / name).read_bytes() for name in FILES}
    second_code, _ = _check(tmp_path, run, capsys)
    assert first_code == second_code == 1
    for name in FILES:
        assert (run / name).read_bytes() == first[name], name


def test_report_html_is_self_contained(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    _check(tmp_path, run, capsys)
    text = (run / "report.html").read_text()
    page = _Page()
    page.feed(text)
    # latency, throughput, errors, workers and RSS (the run has telemetry)
    assert len(page.imgs) == 5
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert all(u.startswith(("data:", "#")) for u in page.urls), page.urls
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert not re.search(r"url\(\s*['\"]?(?!data:)", text)  # no CSS fetches either
    assert "<table>" in text and "baseline" in text and "fault" in text
    for check in ("slo", "recovery", "scaling", "audit", "steady_state"):
        assert f'id="check-{check}"' in text


def test_summary_md_is_a_verdict_table(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, broken=True)
    _check(tmp_path, run, capsys)
    md = (run / "summary.md").read_text()
    assert md.startswith("## llm-chaos check: ❌ invalid")
    assert "| check | verdict | summary |" in md
    assert re.search(r"^\| recovery \| ❌ invalid \|", md, re.M)
    assert re.search(r"^\| baseline \| 100 \|", md, re.M)


# The Ant/Jenkins JUnit schema (junit-10.xsd, the one CI systems read), restated in junit.xsd
# next to this file: validated with xmlschema, then the counts and outcomes checked one by one.
JUNIT_XSD = Path(__file__).with_name("junit.xsd")
SUITE_ATTRS = {"name", "tests", "failures", "errors", "time", "timestamp", "hostname"}
CASE_ATTRS = {"name", "classname", "time"}


def test_junit_xml_follows_the_schema(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, broken=True)
    _check(tmp_path, run, capsys)
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    schema.validate(run / "junit.xml")  # raises, naming the element and attribute at fault
    root = ET.parse(run / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suites = list(root)
    assert [s.tag for s in suites] == ["testsuite"]
    suite = suites[0]
    assert set(suite.attrib) >= SUITE_ATTRS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.attrib["timestamp"])
    assert re.fullmatch(r"\d+(\.\d+)?", suite.attrib["time"])
    assert suite.attrib["hostname"] == "127.0.0.1"
    tags = [child.tag for child in suite]
    assert tags[0] == "properties" and tags[-2:] == ["system-out", "system-err"]
    assert set(tags[1:-2]) == {"testcase"}
    props = suite.find("properties")
    assert props is not None and len(props) >= 2
    for prop in props:
        assert prop.tag == "property" and {"name", "value"} <= set(prop.attrib)
    cases = suite.findall("testcase")
    assert int(suite.attrib["tests"]) == len(cases) == 5
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    assert int(suite.attrib["failures"]) == len(failures) >= 1
    assert int(suite.attrib["skipped"]) == len(skipped)
    assert int(suite.attrib["errors"]) == len(errors)
    for case in cases:
        assert set(case.attrib) >= CASE_ATTRS
        assert len(list(case)) <= 1
        for outcome in case:
            assert outcome.tag in ("failure", "error", "skipped")
            assert outcome.attrib.get("message")
            if outcome.tag != "skipped":
                assert outcome.attrib.get("type")
    assert {c.attrib["name"] for c in failures} >= {"recovery"}
    assert root.attrib["tests"] == suite.attrib["tests"]


def test_report_formats_choose_the_files(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`report.formats` of the run's experiment.yaml: checks.json (the verdicts, always) and
    the files of the formats named, no other; a format it does not know is a usage error."""
    run = _run(tmp_path)
    (run / "experiment.yaml").write_text("seed: 42\nreport: {formats: [junit, markdown]}\n")
    code, out = _check(tmp_path, run, capsys)
    assert code == 3, out
    written = {p.name for p in run.iterdir()} & {*FILES, "results.json"}
    assert written == {"checks.json", "junit.xml", "summary.md"}, out
    assert "wrote checks.json, junit.xml, summary.md" in out

    (run / "experiment.yaml").write_text("seed: 42\nreport: {formats: [pdf]}\n")
    assert main(["check", str(run), "--config", str(tmp_path / "checks.yaml")]) == 2
    assert "report.formats: unknown ['pdf']" in capsys.readouterr().err
