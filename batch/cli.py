"""`python -m batch run FILE`: flags -> config -> run -> exit code. `main(argv)` is what tests call.
`python -m batch plan FILE`: the same flags; reads, sends nothing (or `--sample N` rows).

Exit codes: 0 every row ok; 1 some row failed; 2 usage, configuration or fatal error;
3 stopped at a budget (run again to continue); 130 after SIGINT; 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from batch.core.states import StopReason
from batch.quality.cli import add_eval, run_eval

EXIT_OK, EXIT_ROWS_FAILED, EXIT_FATAL, EXIT_BUDGET = 0, 1, 2, 3
EXIT_CODES = (
    "exit codes: 0 every row ok; 1 some row failed (see the output); 2 usage, configuration or "
    "fatal error; 3 stopped at a budget (--deadline, --max-tokens, --max-requests): run again "
    "to continue; 130 after SIGINT; 143 after SIGTERM"
)
EXIT_BY_SIGNAL = {StopReason.SIGINT: 130, StopReason.SIGTERM: 143}

log = logging.getLogger("batch")


def build_parser(*, settings: bool = True) -> argparse.ArgumentParser:
    """The command line; `settings=False` leaves out the flags of `run` and `plan`, whose
    declarations import pydantic: `--help` and the other commands do not pay for them."""
    parser = argparse.ArgumentParser(
        prog="batch",
        description="Label JSONL rows with models served by Ollama.",
        epilog="Settings also come from BATCH_* variables, OLLAMA_HOST, and a TOML job file "
        "beside the input (IN.toml or batch.toml); flags win over the environment, the "
        "environment over the file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="label every row of a JSONL file",
        description=(
            "Label every row of a JSONL file. Rerunning the same command resumes: rows already ok "
            "in the output are skipped, failed rows are tried again."
        ),
        epilog=EXIT_CODES,
    )
    plan = commands.add_parser(
        "plan",
        help="read every row as run would and say what a run would do; send nothing",
        description="Read every line as `run` would and report the rows to label, the rows "
        "already done, bad lines with their reasons, duplicate ids and estimated input tokens. "
        "Sends nothing, unless --sample N: then N rows are labelled (written to the output like "
        "any run's, on the hosts, retries and access given) and the rest projected. Exit 0: "
        "every line would run; 1: some line would fail; 2: configuration error.",
    )
    plan.add_argument(
        "--json", dest="plan_json", type=Path, metavar="FILE", help="write it as JSON"
    )
    plan.add_argument("--sample", type=_rows, metavar="N", help="label N rows; project the rest")
    for command in (run, plan):
        command.add_argument("input", type=Path, help="the JSONL file of rows")
        if settings:
            _add_settings(command, budgets=command is run)
    _add_merge(commands)
    _add_cache(commands)
    _add_aggregate(commands)
    add_eval(commands)
    return parser


def _rows(text: str) -> int:
    """A count of rows, 1 or more (argparse names the flag and exits 2 otherwise)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (1 or more)")
    return int(text)


def _add_settings(command: argparse.ArgumentParser, *, budgets: bool) -> None:
    """Every setting's flag (batch/run/settings.py), and the two flags that are not settings.
    Without `budgets` (plan, whose sample is bounded by its N rows), none of the budgets'."""
    from batch.run.flags import add_flags
    from batch.run.settings import GROUPS

    def job_file(group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--job-file",
            type=Path,
            metavar="FILE",
            help="TOML job file (default: INPUT.toml, batch.toml)",
        )

    def verbose(group: argparse._ArgumentGroup) -> None:
        group.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    groups = {name: group for name, group in GROUPS.items() if budgets or name != "budgets"}
    add_flags(command, groups, then={"files": job_file, "display": verbose})


def _add_merge(commands: Any) -> None:
    merge = commands.add_parser(
        "merge",
        help="combine shard outputs into one and check every row is there once",
        description="Combine the outputs and summaries of a sharded run (--shard K/N) into one "
        "output and one summary, and check that every input row appears exactly once. "
        "Exit 0: all there, all ok; 1: all there, some failed; 2: rows missing or duplicated.",
    )
    merge.add_argument("input", type=Path, help="the JSONL file the shards labelled")
    merge.add_argument(
        "shards",
        type=Path,
        nargs="*",
        help="shard outputs (default: INPUT.shard-K-of-N.out.jsonl beside the input)",
    )
    merge.add_argument("-o", "--output", type=Path, help="merged output (default INPUT.out.jsonl)")
    merge.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _merge(args: argparse.Namespace) -> int:
    from batch.core.errors import BatchError
    from batch.run.config import JobConfig
    from batch.run.merge import merge_shards, shard_outputs_beside
    from batch.sink.lock import hold_outputs

    plain = JobConfig(input=args.input, output=args.output)
    try:
        outputs = args.shards or shard_outputs_beside(args.input)
        # The shards' outputs too: a live shard is still writing its own.
        with hold_outputs([plain.output_path, *outputs]):
            report = merge_shards(args.input, outputs, plain.output_path, plain.summary_path)
    except (BatchError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    if not report.exact:
        sys.stderr.write(f"{report.describe()}\nnothing written: no merged output, no summary\n")
        return EXIT_FATAL
    sys.stderr.write(
        f"{report.describe()}\nmerged {len(outputs)} shard outputs into {plain.output_path}; "
        f"summary: {plain.summary_path}\n"
    )
    return EXIT_ROWS_FAILED if report.error else EXIT_OK


def _add_cache(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="show a --cache file's entries, size and hits; prune or clear it",
        description="Show a cache file's entries, size and hit counts; with --prune-older-than "
        "or --clear, remove entries first.",
    )
    cache.add_argument("file", type=Path, help="the cache file (--cache, BATCH_CACHE)")
    what = cache.add_mutually_exclusive_group()
    what.add_argument(
        "--prune-older-than", metavar="AGE", help="remove entries unused for AGE, e.g. 30d, 12h"
    )
    what.add_argument("--clear", action="store_true", help="remove every entry")
    cache.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _cache(args: argparse.Namespace) -> int:
    from batch.core.errors import BatchError
    from batch.reuse.cache import cache_stats, parse_age, prune_cache

    try:
        if not args.file.is_file():
            raise FileNotFoundError(f"cache file {args.file} does not exist")
        if args.clear or args.prune_older_than:
            age = None if args.clear else parse_age(args.prune_older_than)
            removed = prune_cache(args.file, older_than_s=age)
            sys.stderr.write(f"removed {removed} entries\n")
        sys.stdout.write(cache_stats(args.file).describe(args.file) + "\n")
    except (BatchError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    return EXIT_OK


def _add_aggregate(commands: Any) -> None:
    aggregate = commands.add_parser(
        "aggregate",
        help="vote a panel's output again from the votes it recorded; send nothing",
        description="Vote each row of a panel's output (--panel, --samples) again from the "
        "votes its line recorded, with no request: the output, confidence and agreement of "
        "every ok row. In place (atomically) unless -o names a new file. Exit 0: done; 2: "
        "unreadable file.",
    )
    aggregate.add_argument("output", type=Path, metavar="OUTPUT", help="a panel's output JSONL")
    aggregate.add_argument(
        "--vote",
        choices=("majority", "dawid-skene"),
        default="majority",
        help="majority (default), or dawid-skene: each member's errors learned from the output",
    )
    aggregate.add_argument("-o", "--output", dest="target", type=Path, help="write here instead")
    aggregate.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _aggregate(args: argparse.Namespace) -> int:
    from batch.core.errors import BatchError
    from batch.labelling.panel_tally import panel_lines
    from batch.run.aggregate import revote
    from batch.sink.lock import hold_outputs

    try:
        if not args.output.is_file():
            raise FileNotFoundError(f"output {args.output} does not exist")
        with hold_outputs([args.output, *([args.target] if args.target else [])]):
            done = revote(args.output, args.vote, args.target)
    except (BatchError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    target = args.target or args.output
    lines = [
        f"{done.rows} rows voted again ({args.vote}), {done.changed} outputs changed: {target}"
    ]
    lines += panel_lines(done.tally.as_record(), costs=False) if done.rows else []
    sys.stderr.write("\n".join(lines) + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(settings=bool(given) and given[0] in ("run", "plan")).parse_args(given)
    if args.command == "eval":
        return run_eval(args)
    if args.command in ("merge", "cache", "aggregate"):
        _configure_logging(args.verbose, quiet=False)
        commands = {"merge": _merge, "cache": _cache, "aggregate": _aggregate}
        return commands[args.command](args)
    verbose = args.__dict__.pop("verbose")
    job_file = args.__dict__.pop("job_file")
    command = args.__dict__.pop("command")
    plan_json, sample = args.__dict__.pop("plan_json", None), args.__dict__.pop("sample", None)
    quiet = bool(getattr(args, "quiet", False))
    json_lines = _json_logs_asked(args)
    _configure_logging(verbose, quiet=quiet, json_lines=json_lines)

    # Imported here so that `--help` stays fast.
    import anyio

    from batch.core.errors import BatchError
    from batch.core.log_events import event
    from batch.observe.step_summary import append_run_section
    from batch.run.config import load_config
    from batch.run.flags import given_flags
    from batch.run.pipeline import run_job
    from batch.run.settings import SETTINGS
    from batch.run.summary import counts, human_summary

    try:
        config = load_config(given_flags(args, SETTINGS), job_file=job_file)
        if (config.observe.log_format == "json") != json_lines:  # the job file said so
            json_lines = config.observe.log_format == "json"
            _configure_logging(verbose, quiet=config.display.quiet, json_lines=json_lines)
        if command == "plan":
            return int(anyio.run(_plan, config, plan_json, sample))
        summary = anyio.run(
            partial(run_job, config, handle_signals=True, show=not config.display.quiet)
        )
    except KeyboardInterrupt:  # before the run installed its own signal handling
        log.error("interrupted")
        return EXIT_BY_SIGNAL[StopReason.SIGINT]
    except (BatchError, OSError) as exc:
        log.error("%s", exc, extra=event("run_failed", exit_code=EXIT_FATAL))
        return EXIT_FATAL
    except Exception as exc:  # the run turns its tasks' errors into one; this is a last guard
        log.error("%s", _one_message(exc), extra=event("run_failed", exit_code=EXIT_FATAL))
        log.debug("the traceback", exc_info=exc)
        return EXIT_FATAL
    code = _exit_code(summary)
    if json_lines:
        log.info("run finished", extra=event("run_finished", exit_code=code, **counts(summary)))
    else:
        sys.stderr.write(human_summary(summary, config.summary_path) + "\n")
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        append_run_section(Path(step_summary), summary, code)
    return code


def _exit_code(summary: Any) -> int:
    if summary.stopped_by is not None and summary.stopped_by.is_budget:
        return EXIT_BUDGET
    if summary.stopped_by is not None:
        return EXIT_BY_SIGNAL.get(summary.stopped_by, EXIT_FATAL)
    return EXIT_ROWS_FAILED if summary.rows.error else EXIT_OK


def _one_message(exc: Exception) -> str:
    """One line for an error that escaped the run: an exception group's first leaf (a group
    says only how many errors it holds), and a bug named as one."""
    from batch.core.errors import BatchError

    while isinstance(exc, ExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, BatchError | OSError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (a bug: run with -v for the traceback)"


async def _plan(config: Any, json_path: Path | None, sample: int | None) -> int:
    """`plan`: the plan of the whole input; with `sample`, N rows labelled and the rest
    projected from them."""
    import anyio

    from batch.core.schema import load_schema
    from batch.labelling.budget import Budgets
    from batch.run.pipeline import row_defaults, run_job
    from batch.run.plan import make_plan, project, write_plan

    config.check_paths()
    schema = load_schema(config.prompt.schema_ref) if config.prompt.schema_ref else None
    defaults, fingerprint = row_defaults(config, schema), config.fingerprint(schema)
    plan = await make_plan(config, defaults, fingerprint)
    if sample:
        summary = await run_job(
            config, budgets=Budgets(max_rows=sample), show=not config.display.quiet
        )
        rest = await make_plan(config, defaults, fingerprint)
        plan.sample = project(summary, rest.rows_to_label)
    sys.stdout.write(plan.describe() + "\n")
    if json_path is not None:
        await anyio.to_thread.run_sync(write_plan, json_path, plan)
    return EXIT_OK if plan.clean else EXIT_ROWS_FAILED


def _configure_logging(verbose: bool, *, quiet: bool, json_lines: bool = False) -> None:
    """Human lines, or with `json_lines` one JSON object a line (`--log-format json`), where
    the per-row events of `batch.events` are shown too."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if json_lines and not verbose:  # a machine reads it: -q only leaves out progress events
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        from batch.observe.json_logs import JsonLines

        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("batch.events").setLevel(logging.NOTSET if json_lines else logging.CRITICAL)


def _json_logs_asked(args: argparse.Namespace) -> bool:
    """--log-format json, or BATCH_LOG_FORMAT=json: known before the settings are read, so
    that a refusal of the settings is a JSON line too (a job file's value applies after)."""
    given = getattr(args, "log_format", None) or os.environ.get("BATCH_LOG_FORMAT", "")
    return given.strip().lower() == "json"
