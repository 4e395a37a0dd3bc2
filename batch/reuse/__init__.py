"""Answers given once: identical requests within a run share one reply, and with `--cache` a
reply from any earlier run is taken from an SQLite file."""
