"""The report as the lines `eval` prints."""

from __future__ import annotations

from batch.quality.fields import FieldReport
from batch.quality.report import STRING_COMPARISON, Report

WORST_PAIRS_SHOWN = 5


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_text(report: Report) -> str:
    matched = report.matched
    failed = report.failed_ids
    against = report.reference_kind == "output"
    lines = [
        f"eval {report.output} against {'output' if against else 'gold'} {report.reference}",
        f"rows: {report.reference_rows} reference, {len(matched.pairs)} with an output row "
        f"({len(failed)} failed, counted wrong), {len(matched.missing)} with none; "
        f"{len(matched.extra)} output rows with no reference, left out",
    ]
    lines += _listed("failed", failed)
    lines += _listed("no output row", matched.missing)
    lines += _listed("failed in the reference run, left out", matched.reference_failed)
    lines.append(f"strings are compared {STRING_COMPARISON}")
    for name, field in report.fields.items():
        lines += _field_lines(name, field, "agreement" if against else "accuracy")
    lines += _panel_lines(report)
    for result in report.gates:
        lines.append(f"gate {result.describe()}")
    return "\n".join(lines)


def _listed(what: str, ids: list[str], limit: int = 20) -> list[str]:
    if not ids:
        return []
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return [f"  {what}: {', '.join(ids[:limit])}{more}"]


def _field_lines(name: str, field: FieldReport, measure: str) -> list[str]:
    kind = f"{field.kind}, categorical" if field.categorical else field.kind
    head = (
        f"{name} ({kind}): {field.correct}/{field.compared} = {percent(field.accuracy)} {measure}"
    )
    if field.categorical:
        head += f", kappa {figure(field.kappa)}, macro-F1 {figure(field.macro_f1)}"
    if field.kind == "number":
        head += f", exact match {percent(field.accuracy)}, MAE {figure(field.mae)}"
    lines = [head]
    if field.per_value is not None:
        width = max(len(v) for v in [*field.per_value, "value"])
        lines.append(f"  {'value':<{width}}  precision  recall     f1  support")
        for value, row in field.per_value.items():
            lines.append(
                f"  {value:<{width}}  {row.precision:9.3f}  {row.recall:6.3f}  {row.f1:5.3f}"
                f"  {row.support:7d}"
            )
    if field.confusion is not None:
        lines += _confusion_lines(*field.confusion)
    for pair in field.confused_pairs()[:WORST_PAIRS_SHOWN]:
        ids = ", ".join(example["id"] for example in pair["examples"])
        lines.append(f"  {pair['reference']} -> {pair['output']}: {pair['count']} (e.g. {ids})")
    for what, bands in (
        ("confidence", field.confidence_bands),
        ("agreement", field.agreement_bands),
    ):
        for band in bands or ():
            if band["rows"]:
                close = "]" if band["to"] == 1 else ")"
                lines.append(
                    f"  {what} [{band['from']:g}, {band['to']:g}{close}: {band['correct']}/"
                    f"{band['rows']} = {percent(band['accuracy'])}"
                )
    return lines


def _panel_lines(report: Report) -> list[str]:
    """A panel's members, each on its own votes, beside the panel."""
    panel = report.panel
    if panel is None:
        return []
    kappa = ", ".join(f"{name} {figure(k)}" for name, k in panel.kappa.items())
    lines = [f"panel: tokens per correct label {_per_label(panel.spent.as_json())}"]
    if kappa:
        lines[0] += f"; Fleiss' kappa over the votes {kappa}"
    for member, (fields, spent) in panel.members.items():
        scores = ", ".join(
            f"{name} {field.correct}/{field.compared} = {percent(field.accuracy)}"
            for name, field in fields.items()
        )
        lines.append(
            f"  member {member} (its own votes): {scores}; tokens per correct label "
            f"{_per_label(spent.as_json())}"
        )
    return lines


def _per_label(spent: dict[str, float | int | None]) -> str:
    value = spent["tokens_per_correct_label"]
    return "n/a" if value is None else f"{value:g}"


def _confusion_lines(rows: list[str], columns: list[str], counts: list[list[int]]) -> list[str]:
    width = max(len(v) for v in [*rows, "reference"])
    cells = [max(len(c), 3) for c in columns]
    header = "  ".join(f"{c:>{w}}" for c, w in zip(columns, cells, strict=True))
    lines = ["  confusion (rows: reference, columns: output)", f"  {'':<{width}}  {header}"]
    for row, line in zip(rows, counts, strict=True):
        body = "  ".join(f"{n:>{w}d}" for n, w in zip(line, cells, strict=True))
        lines.append(f"  {row:<{width}}  {body}")
    return lines
