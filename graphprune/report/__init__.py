"""Reports: report.json (schema-versioned) and report.md for every compile/prune run."""
from graphprune.report.writer import REPORT_SCHEMA, environment, write_report

__all__ = ["REPORT_SCHEMA", "environment", "write_report"]
