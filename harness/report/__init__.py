"""The reporter: writes a judged run as checks.json and, as `report.formats` asks, summary.json,
junit.xml, summary.md, a self-contained report.html and results.json (vLLM bench's fields and
units) into its run directory."""

from __future__ import annotations

from .files import FORMAT_FILES, REPORT_FILES, print_verdicts, summary_json, write_reports
from .html import report_html
from .junit import junit_xml
from .markdown import summary_md
from .results import results_json

__all__ = ["FORMAT_FILES", "REPORT_FILES", "junit_xml", "print_verdicts", "report_html",
           "results_json", "summary_json", "summary_md", "write_reports"]
