"""The reporter: writes a judged run as checks.json, summary.json, junit.xml, summary.md, a
self-contained report.html and results.json (vLLM bench's fields and units) into its run
directory."""

from __future__ import annotations

from .files import REPORT_FILES, summary_json, write_reports
from .html import report_html
from .junit import junit_xml
from .markdown import summary_md
from .results import results_json

__all__ = ["REPORT_FILES", "junit_xml", "report_html", "results_json", "summary_json",
           "summary_md", "write_reports"]
