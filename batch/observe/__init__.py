"""Watching a run from outside: Prometheus metrics, OpenTelemetry traces, JSON logs, CI
summaries. Imported only when asked for (run/observing.py)."""

# OpenTelemetry's GenAI bucket boundaries for an operation's duration (seconds): a reply takes
# 10 ms to minutes. The Prometheus histograms use them too, so both views bin alike.
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48]
DURATION_BUCKETS += [40.96, 81.92]
