"""`--html`: the report as one self-contained page: inline style, no script, nothing loaded from
elsewhere, so it opens the same from a CI artefact, a mail or a laptop offline."""

from __future__ import annotations

from html import escape
from typing import Any

from batch.quality.fields import FieldReport
from batch.quality.report import STRING_COMPARISON, Report
from batch.quality.text import figure, percent

PAIRS_SHOWN = 8
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:4px 0 6px}h3{font-size:15px}
.muted{color:#5b6572}.card{border:1px solid #d6dbe1;border-radius:8px;padding:12px 16px;
margin:12px 0}.figures span{display:inline-block;margin-right:18px}.figures b{font-size:18px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:4px 8px;text-align:right}
th{font-weight:600}td.l,th.l{text-align:left}.heat td{min-width:44px;text-align:center;
border:1px solid #fff}.ok{color:#17643a;font-weight:600}.fail{color:#a4161a;font-weight:600}
.bar{height:12px;border-radius:3px;display:inline-block;vertical-align:middle}
.ref{background:#8a96a3}.out{background:#2f6fdf}.row{display:flex;gap:24px;flex-wrap:wrap}
.ex{color:#5b6572;font-size:13px}
"""


def render_html(report: Report) -> str:
    against = report.reference_kind == "output"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>batch eval: {escape(str(report.output))}</title><style>{STYLE}</style></head>",
        "<body><h1>Label quality</h1>",
        f"<p class=muted>{escape(str(report.output))} against "
        f"{'another run' if against else 'gold'} {escape(str(report.reference))}; "
        f"strings compared {STRING_COMPARISON}.</p>",
        _coverage(report),
        _gates(report),
    ]
    parts.append(_panel(report))
    for name, field in report.fields.items():
        parts.append(_field(name, field, "agreement" if against else "accuracy"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _coverage(report: Report) -> str:
    matched = report.matched
    failed = report.failed_ids
    items = [
        f"{report.reference_rows} reference rows",
        f"{len(matched.pairs)} with an output row",
        f"{len(failed)} failed (counted wrong)",
        f"{len(matched.missing)} with no output row",
        f"{len(matched.extra)} output rows with no reference (left out)",
    ]
    lists = [
        (what, ids)
        for what, ids in (
            ("Failed", failed),
            ("No output row", matched.missing),
            ("Failed in the reference run", matched.reference_failed),
        )
        if ids
    ]
    listed = "".join(f"<p class=ex>{what}: {escape(_some(ids))}</p>" for what, ids in lists)
    return f"<div class=card id=coverage><b>Rows</b>: {escape('; '.join(items))}{listed}</div>"


def _some(ids: list[str], limit: int = 50) -> str:
    more = f" and {len(ids) - limit} more (all in --report)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def _gates(report: Report) -> str:
    if not report.gates:
        return "<div class=card id=gates><b>Gates</b>: none given</div>"
    verdict = (
        "<span class=ok>all hold</span>" if report.passed else "<span class=fail>failed</span>"
    )
    rows = "".join(
        f"<tr><td class=l>{escape(r.gate.name)}</td><td>{figure(r.value)}</td>"
        f"<td>&ge; {r.gate.minimum:g}</td><td class={'ok' if r.passed else 'fail'}>"
        f"{'holds' if r.passed else 'FAILED'}</td></tr>"
        for r in report.gates
    )
    return (
        f"<div class=card id=gates><b>Gates</b>: {verdict}<table><tr><th class=l>gate</th>"
        f"<th>value</th><th>minimum</th><th></th></tr>{rows}</table></div>"
    )


def _field(name: str, field: FieldReport, measure: str) -> str:
    kind = f"{field.kind}, categorical" if field.categorical else field.kind
    figures = [
        f"<span>{measure} <b>{percent(field.accuracy)}</b> "
        f"({field.correct}/{field.compared})</span>"
    ]
    if field.categorical:
        figures.append(f"<span>kappa <b>{figure(field.kappa)}</b></span>")
        figures.append(f"<span>macro-F1 <b>{figure(field.macro_f1)}</b></span>")
    if field.kind == "number":
        figures.append(f"<span>MAE <b>{figure(field.mae)}</b></span>")
    body = [
        f"<div class=card id='field-{escape(name)}'><h2>{escape(name)} "
        f"<span class=muted>({kind})</span></h2><p class=figures>{''.join(figures)}</p>"
    ]
    row = []
    if field.confusion is not None:
        row.append(_heat_map(*field.confusion))
    if field.distribution is not None:
        row.append(_distribution(*field.distribution))
    if field.confidence_bands is not None:
        row.append(_bands(field.confidence_bands))
    if field.agreement_bands is not None:
        row.append(_bands(field.agreement_bands, "the panel's agreement"))
    body.append(f"<div class=row>{''.join(row)}</div>")
    if field.per_value is not None:
        body.append(_per_value(field))
    body.append(_pairs(field))
    body.append("</div>")
    return "".join(body)


def _heat_map(rows: list[str], columns: list[str], counts: list[list[int]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    lines = []
    for row, line in zip(rows, counts, strict=True):
        total = sum(line) or 1
        cells = "".join(
            f"<td style='background:{_heat(n / total, row == column)}'>{n}</td>"
            for column, n in zip(columns, line, strict=True)
        )
        lines.append(f"<tr><th class=l>{escape(row)}</th>{cells}</tr>")
    return (
        "<div><h3>Confusion (rows: reference, columns: output)</h3>"
        f"<table class=heat><tr><th></th>{head}</tr>{''.join(lines)}</table></div>"
    )


def _heat(share: float, diagonal: bool) -> str:
    """Green on the diagonal (right), red off it (wrong), stronger with the row's share."""
    if share == 0:
        return "#f4f6f8"
    colour = "23,140,70" if diagonal else "200,30,40"
    return f"rgba({colour},{0.15 + 0.75 * share:.2f})"


def _distribution(reference: dict[str, int], output: dict[str, int]) -> str:
    largest = max([*reference.values(), *output.values(), 1])
    lines = []
    for value in output:
        ref_n, out_n = reference.get(value, 0), output[value]
        lines.append(
            f"<tr><th class=l>{escape(value)}</th><td class=l>"
            f"<span class='bar ref' style='width:{160 * ref_n / largest:.0f}px'></span> {ref_n}"
            f"<br><span class='bar out' style='width:{160 * out_n / largest:.0f}px'></span>"
            f" {out_n}</td></tr>"
        )
    return (
        "<div><h3>Distribution (<span class='bar ref' style='width:12px'></span> reference, "
        "<span class='bar out' style='width:12px'></span> output)</h3>"
        f"<table class=dist>{''.join(lines)}</table></div>"
    )


def _bands(bands: list[dict[str, Any]], by: str = "confidence") -> str:
    lines = "".join(
        f"<tr><td class=l>{b['from']:g}&ndash;{b['to']:g}</td><td>{b['rows']}</td>"
        f"<td>{percent(b['accuracy'])}</td></tr>"
        for b in bands
    )
    return (
        f"<div><h3>Accuracy by {escape(by)}</h3><table class=bands><tr><th class=l>"
        f"{escape(by.split()[-1])}</th><th>rows</th><th>accuracy</th></tr>{lines}</table></div>"
    )


def _panel(report: Report) -> str:
    """The members side by side with the panel: each field's accuracy (and kappa), and the
    tokens each spent per correct label."""
    panel = report.panel
    if panel is None:
        return ""
    names = list(report.fields)
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    rows = [("panel (consensus)", report.fields, panel.spent.as_json())]
    rows += [(f"{member}, own votes", f, s.as_json()) for member, (f, s) in panel.members.items()]
    lines = "".join(
        f"<tr><td class=l>{escape(who)}</td>"
        + "".join(f"<td>{_score(fields[name])}</td>" for name in names)
        + f"<td>{figure(spent['tokens_per_correct_label'])}</td></tr>"
        for who, fields, spent in rows
    )
    kappa = ", ".join(f"{escape(n)} {figure(k)}" for n, k in panel.kappa.items()) or "n/a"
    return (
        "<div class=card id=panel><h2>Panel and members</h2>"
        f"<p class=muted>Fleiss' kappa over the votes: {kappa}</p><table><tr><th class=l></th>"
        f"{head}<th>tokens per correct label</th></tr>{lines}</table></div>"
    )


def _score(field: FieldReport) -> str:
    kappa = f" (kappa {figure(field.kappa)})" if field.categorical else ""
    return f"{percent(field.accuracy)}{kappa}"


def _per_value(field: FieldReport) -> str:
    assert field.per_value is not None
    lines = "".join(
        f"<tr><td class=l>{escape(value)}</td><td>{figure(r.precision)}</td>"
        f"<td>{figure(r.recall)}</td><td>{figure(r.f1)}</td><td>{r.support}</td>"
        f"<td>{r.predicted}</td></tr>"
        for value, r in field.per_value.items()
    )
    return (
        "<h3>Per value</h3><table class=per-value><tr><th class=l>value</th><th>precision</th>"
        f"<th>recall</th><th>F1</th><th>support</th><th>predicted</th></tr>{lines}</table>"
    )


def _pairs(field: FieldReport) -> str:
    pairs = field.confused_pairs()[:PAIRS_SHOWN]
    if not pairs:
        return "<h3>Worst-confused pairs</h3><p class=muted>none: every compared row agrees</p>"
    items = []
    for pair in pairs:
        examples = "".join(
            f"<div class=ex>{escape(e['id'])}"
            f"{': ' + escape(e['context']) if e['context'] else ''}</div>"
            for e in pair["examples"]
        )
        items.append(
            f"<li><b>{escape(pair['reference'])} &rarr; {escape(pair['output'])}</b>: "
            f"{pair['count']} {'row' if pair['count'] == 1 else 'rows'}{examples}</li>"
        )
    return f"<h3>Worst-confused pairs</h3><ol class=pairs>{''.join(items)}</ol>"
