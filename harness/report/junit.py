"""junit.xml: one test case per check, in the Ant/Jenkins JUnit schema that CI systems read
(invalid -> <failure>, a crashed check -> <error>, any other unknown -> <skipped>)."""

from __future__ import annotations

import json
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from ..checks.result import Verdict
from ..checks.runner import CheckRun

__all__ = ["junit_xml"]


def _timestamp(t: float) -> str:
    # xs:dateTime without a zone, as the Ant schema's pattern wants
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))


def _host(result: CheckRun) -> str:
    # the target's host name from the experiment (its url; none: the reference target the
    # harness started here); deterministic, unlike gethostname()
    target = result.run.experiment.get("target")
    url = str((target.get("url") if isinstance(target, Mapping) else None) or "")
    return urllib.parse.urlsplit(url).hostname or "localhost"


def junit_xml(result: CheckRun, hostname: str | None = None) -> str:
    """The JUnit XML document of `result` (deterministic for a given run)."""
    counts = {"tests": len(result.results), "failures": 0, "errors": 0, "skipped": 0}
    cases: list[ET.Element] = []
    for check in result.results:
        case = ET.Element("testcase", {"name": check.name, "classname": "llm_chaos.checks",
                                       "time": "0"})
        detail = json.dumps(check.to_json(), indent=2, default=str)
        if check.verdict is Verdict.INVALID:
            counts["failures"] += 1
            ET.SubElement(case, "failure", {"message": check.summary,
                                            "type": "invalid"}).text = detail
        elif check.verdict is Verdict.UNKNOWN and "error" in check.evidence:
            counts["errors"] += 1
            ET.SubElement(case, "error", {"message": check.summary,
                                          "type": "crashed"}).text = detail
        elif check.verdict is Verdict.UNKNOWN:
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", {"message": f"unknown: {check.summary}"})
        cases.append(case)
    duration = f"{max(0.0, result.run.end - result.run.start):.3f}"
    attrs = {k: str(v) for k, v in counts.items()}
    # the schema has no `skipped` on <testsuites>: only on each <testsuite>
    root = ET.Element("testsuites", {"name": "llm-chaos",
                                     **{k: v for k, v in attrs.items() if k != "skipped"},
                                     "time": duration})
    suite = ET.SubElement(root, "testsuite", {
        "name": "llm-chaos check", "package": "llm_chaos", "id": "0", **attrs,
        "time": duration, "timestamp": _timestamp(result.run.start),
        "hostname": hostname or _host(result),
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("run_dir", str(result.run.path)), ("seed", str(result.run.seed)),
                        ("verdict", result.verdict.value),
                        ("exit_code", str(result.exit_code))):
        ET.SubElement(props, "property", {"name": name, "value": value})
    suite.extend(cases)
    ET.SubElement(suite, "system-out").text = "\n".join(
        f"{c.name}: {c.verdict.value}: {c.summary}" for c in result.results)
    ET.SubElement(suite, "system-err").text = result.timeline_error or ""
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
