"""Serving targets the harness tests. Standalone: nothing here imports `harness`."""
