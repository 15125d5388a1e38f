"""The run report: ``report.md`` and a self-contained ``report.html`` (plots inline).

It reads only what the run wrote (file names from :mod:`finediff.names`) and puts the
evidence in order: what changed (the top divergent examples side by side), the soft
prompt's effect, the category comparison, the best hard prompts, the ADL tokens and
steering samples, and the plots.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Optional


from finediff import names
from finediff.io import atomic_path

from finediff.names import REPORT_HTML, REPORT_MD


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cell(text: str, n: int = 300) -> str:
    return _short(text, n).replace("|", "\\|")


def build_sections(run: Path, title: str = "", checker=None, top: int = 8) -> list[tuple[str, list[str], list[Path]]]:
    """``[(heading, markdown lines, images)]`` in order of evidence."""
    sections = []
    records = _read_jsonl(run / names.DIVERGENT_DATASET_JSONL)
    if records:
        lines = [f"The {top} generation pairs where the finetuned model departs most from the base "
                 "(highest per-token KL(ft‖base) on its own answer):", "",
                 "| # | prompt | base (generation_1) | finetuned (generation_2) | KL | disagreement |"
                 + (" behaviour |" if checker else ""),
                 "|---|---|---|---|---|---|" + ("---|" if checker else "")]
        for i, r in enumerate(records[:top], 1):
            m = r["metrics"]
            row = (f"| {i} | {_cell(r['prompt'], 160)} | {_cell(r['generation_1'])} | {_cell(r['generation_2'])} "
                   f"| {m['kl_divergence']:.2f} | {m['token_disagreement_rate']:.0%} |")
            if checker:
                row += f" {'yes' if checker(r['generation_2'], r) else 'no'} |"
            lines.append(row)
        if checker:
            shown = sum(checker(r["generation_2"], r) for r in records[:10])
            lines += ["", f"The organism's behaviour checker fires on {shown} of the 10 highest-divergence records."]
        sections.append(("What changed: the most divergent examples", lines, []))
    metrics = _read_json(run / names.METRICS_FILE)
    if metrics:
        lines = ["| measure on held-out texts | divergence |", "|---|---|"]
        lines += [f"| {k} | {metrics[k]:.4f} |" for k in names.VAL_METRIC_KEYS if k in metrics]
        lines += ["", f"After {metrics.get('global_step')} steps ({metrics.get('wall_time_s', 0):.0f} s of training)."]
        sections.append(("The soft prompt", lines, []))
    comp = run / names.COMPARISON_CSV
    if comp.exists():
        rows = list(csv.DictReader(comp.open()))
        lines = ["| rank | category | mean divergence | 95% CI |", "|---|---|---|---|"]
        lines += [f"| {i} | {r['category']} | {float(r['mean_divergence']):.4f} | "
                  f"[{float(r['ci_low']):.4f}, {float(r['ci_high']):.4f}] |" for i, r in enumerate(rows, 1)]
        sections.append(("Which category changed most", lines, [run / names.COMPARISON_PNG]))
    hard = _read_jsonl(run / names.HARD_PROMPTS_FILE)
    if hard:
        lines = ["| method | hard prompt | divergence | no prompt | base perplexity |", "|---|---|---|---|---|"]
        lines += [f"| {h['method']} | `{_cell(h['text'], 120)}` | {h['divergence']:.4f} | "
                  f"{h['divergence_no_prompt']:.4f} | {h['perplexity']:.0f} |" for h in hard]
        sections.append(("Hard prompts", lines, []))
    clusters = _read_json(run / names.CLUSTERS_FILE)
    if clusters:
        lines = [f"{clusters['k']} clusters of what the finetuned model said differently "
                 f"(silhouette {clusters['silhouette']:.2f}), highest mean KL first:", ""]
        for c in clusters["clusters"]:
            lines += [f"**{c['label']}** ({c['size']} records, mean KL {c['mean_kl']:.2f})", "",
                      "| prompt | base | finetuned |", "|---|---|---|"]
            lines += [f"| {_cell(e['prompt'], 120)} | {_cell(e['generation_1'], 200)} | {_cell(e['generation_2'], 200)} |"
                      for e in c["examples"]]
            lines.append("")
        sections.append(("Behaviour clusters", lines, []))
    analysis = _read_json(run / names.ANALYSIS_FILE)
    if analysis:
        words = analysis["words"]
        lines = ["* Words the finetuned model favours: " + ", ".join(f"`{w}`" for w, *_ in words["finetuned_favours"][:15]),
                 "* Words the base model favours: " + ", ".join(f"`{w}`" for w, *_ in words["base_favours"][:15]),
                 f"* The generations part ways at token {analysis['first_divergence']['mean_position'] or 0:.1f} on "
                 f"average ({analysis['first_divergence']['at_first_token']} of {analysis['n_records']} at the first "
                 "token)."]
        sections.append(("Divergence analysis", lines, [run / names.ANALYSIS_KL_PNG, run / names.ANALYSIS_FIRST_PNG]))
    lens = _read_json(run / names.LENS_DIR / names.LENS_SUMMARY)
    if lens:
        lines = []
        for layer, entry in lens["layers"].items():
            best = max(entry["positions"], key=lambda e: e.get("relevance", {}).get("difference_patchscope", 0.0))
            toks = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in best["patchscope"]["tokens"][:12])
            lens_toks = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in best["logit_lens_pos"][:12])
            lines += [f"Layer {layer}, position {best['position']}:", "", f"* Patchscope (scale "
                      f"{best['patchscope']['chosen_scale']}): {toks}", f"* Logit lens: {lens_toks}"]
            rel = entry.get("relevance_max_over_positions")
            if rel:
                lines.append("* Token relevance (max over positions): " +
                             ", ".join(f"{k} {v:.0%}" for k, v in rel.items()))
            st = entry.get("steering")
            if st:
                lines += ["", f"Steering strength {st['chosen_strength']} (base perplexity "
                          f"{st['perplexity_by_strength']}; threshold {st['threshold_perplexity']}).", ""]
                if "steered_behaviour_rate" in st:
                    lines.append(f"Behaviour rate: steered {st['steered_behaviour_rate']:.0%}, unsteered "
                                 f"{st['unsteered_behaviour_rate']:.0%}.")
                lines += ["", "| prompt | unsteered | steered |", "|---|---|---|"]
                lines += [f"| {_cell(p, 100)} | {_cell(u, 200)} | {_cell(s, 200)} |"
                          for p, u, s in list(zip(st["prompts"], st["unsteered"], st["steered"]))[:4]]
        sections.append(("Activation Difference Lens", lines,
                         [run / names.LENS_DIR / names.LENS_RELEVANCE_PNG, run / names.LENS_DIR / names.LENS_NORM_PNG]))
    return sections


def write_report(run: str | Path, title: str = "", checker=None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run folder; return their paths."""
    run = Path(run)
    sections = build_sections(run, title, checker)
    md = [f"# finediff report{': ' + title if title else ''}", ""]
    body = [f"<h1>finediff report{': ' + html.escape(title) if title else ''}</h1>"]
    for heading, lines, images in sections:
        md += [f"## {heading}", "", *lines, ""]
        md += [f"![{p.stem}]({p.relative_to(run)})" for p in images if p.exists()] + [""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(_markdown_to_html(lines))
        for p in images:
            if p.exists():
                data = base64.b64encode(p.read_bytes()).decode()
                body.append(f'<img alt="{p.stem}" src="data:image/png;base64,{data}">')
    if not sections:
        md.append("No results yet in this folder.")
    with atomic_path(run / REPORT_MD) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>finediff report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:4px 6px;vertical-align:top}th{background:#f3f3f3}img{max-width:600px;display:block}"
            "code{background:#f3f3f3}</style></head><body>" + "\n".join(body) + "</body></html>")
    with atomic_path(run / REPORT_HTML) as tmp:
        tmp.write_text(page)
    return run / REPORT_MD, run / REPORT_HTML


def _markdown_to_html(lines: list[str]) -> str:
    """The small Markdown subset the report uses: tables, bullets, paragraphs, `code`."""
    import re

    def inline(text: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text.replace("\\|", "|")))

    out, table = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if table:
            head, *rows = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
            table = []
        if line.startswith("**") and line.count("**") >= 2:
            out.append("<h3>" + inline(line.split("**")[1]) + "</h3>" + (f"<p>{inline(line.split('**', 2)[2])}</p>"))
        elif line.startswith("* "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)
