"""Label quality: `python -m batch eval` measures a run's output against hand labels (or another
run), per field, and gates on the figures.

    load.py     output and gold files -> rows matched by id
    fields.py   one field's kind and figures
    metrics.py  accuracy, kappa, precision/recall/F1, confusion, MAE: pure functions
    gates.py    --min-accuracy / --min NAME=X
    report.py   the whole report and its JSON form (the stable keys are listed there)
    text.py     the printed lines; html.py the one-page HTML report
    cli.py      the subcommand's flags and exit codes

Nothing is imported here: `batch.cli` imports `cli.py` for every command, `--help` included.
"""
