"""Watching a run from outside: Prometheus metrics, OpenTelemetry traces, JSON logs, CI
summaries. Imported only when asked for (run/observing.py)."""
