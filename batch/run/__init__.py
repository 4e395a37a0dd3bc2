"""A run from settings to summary: the settings, the wiring of source, labellers and sink into
one task group, the progress display, `plan`, `merge` and the summary."""
