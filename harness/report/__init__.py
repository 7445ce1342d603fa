"""The reporter: writes a judged run as checks.json, summary.json, junit.xml, summary.md and a
self-contained report.html into its run directory."""

from __future__ import annotations

from .files import REPORT_FILES, summary_json, write_reports
from .html import report_html
from .junit import junit_xml
from .markdown import summary_md

__all__ = ["REPORT_FILES", "junit_xml", "report_html", "summary_json", "summary_md",
           "write_reports"]
