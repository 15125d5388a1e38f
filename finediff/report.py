"""The run report: ``report.md`` and a self-contained ``report.html`` (plots inline).

It reads only what the run wrote (file names from :mod:`finediff.names`, typed records
from :mod:`finediff.records`) and puts the evidence in order: what changed (the top
divergent examples side by side), the soft prompt's effect, the category comparison, the
best hard prompts, the behaviour clusters, the divergence analysis, the ADL tokens and
steering samples, and the plots. The HTML page is the same Markdown rendered by
markdown-it-py, with the plots embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from markdown_it import MarkdownIt

from finediff import names
from finediff.conditions import ConditionResult, read_conditions
from finediff.errors import FinediffError
from finediff.hard_prompts import read_hard_prompts
from finediff.io import markdown_table, read_json, write_text
from finediff.prompt_effect import read_effect
from finediff.records import CategoryResult, LensSummary, read_dataset
from finediff.summary import first_screen, read_verdict, unconfirmed_lines
from finediff.survey import has_survey, read_survey
from finediff.weights import WeightReading


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cell(text: str, n: int = 300) -> str:
    return _short(text, n).replace("|", "\\|")


def build_sections(run: Path, title: str = "", checker=None, top: int = 8) -> list[tuple[str, list[str], list[Path]]]:
    """``[(heading, markdown lines, images)]`` in order of evidence."""
    sections = []
    verdict = read_verdict(run)
    if verdict is not None:
        sections.append(("What changed", first_screen(verdict), []))

    if has_survey(run):
        survey = read_survey(run)
        lines = ([verdict.context, ""] if verdict is not None and verdict.context else [])
        lines += [f"{len(survey.texts)} prompts scored by the mean per-token KL(ft‖base) over the finetuned model's "
                 f"answer (median {survey.median_divergence:.4f}); a group *changed* when it holds more than its share "
                 "of the most divergent prompts (one-sided Fisher exact test, Holm-corrected) and its mean is well "
                 "above the median.",
                 ""]
        lines += markdown_table(
            ["rank", "group", "source", "prompts", "mean divergence", "95% CI", "x median", "among the most divergent",
             "corrected p", "changed"],
            [[i, g.group, g.source, g.n, f"{g.mean_divergence:.4f}", f"[{g.ci_low:.4f}, {g.ci_high:.4f}]",
              f"{g.ratio:.1f}", f"{g.top_share:.0%}", f"{g.p_value:.2g}", "**yes**" if g.changed else "no"]
             for i, g in enumerate(survey.groups[:15], 1)])
        sections.append(("Where the answers changed (survey)", lines, [run / names.SURVEY_PNG]))
        mined = []
        if survey.mining and survey.mining.words:
            m = survey.mining
            mined += [f"Diff mining over {m.n_texts} discovery answers ({m.n_positions} positions): the words whose "
                      "logits the finetune raises most (leads for the tests, not claims): "
                      + ", ".join(f"`{w.word}` ({w.count})" for w in m.words[:15])]
            mined += [f"* topic {i}: " + ", ".join(t) for i, t in enumerate(m.topics, 1)]
        if survey.mining and survey.mining.n_generic_texts:
            m = survey.mining
            mined += ["", f"Over {m.n_generic_texts} generic texts (read, not answered), the words it raises most: "
                      + (", ".join(f"`{w.word}` ({w.count})" for w in m.generic_words[:15]) or "none")]
        if mined:
            sections.append(("Words the finetune raises (diff mining)", mined, [run / names.DIFF_MINING_PNG]))
    data = run / names.DIVERGENT_DATASET_JSONL
    records = read_dataset(data) if data.is_file() else []
    if records:
        lines = [f"The {top} generation pairs where the finetuned model departs most from the base "
                 "(highest per-token KL(ft‖base) on its own answer):", ""]
        def shows(r) -> bool:
            return checker(r.generation_2, {"prompt": r.prompt})

        rows = []
        for i, r in enumerate(records[:top], 1):
            m = r.metrics
            prompt = _cell(r.prompt, 160) + (f" *(amplified, alpha {r.amplification:g})*" if r.amplification else "")
            rows.append([i, prompt, _cell(r.generation_1), _cell(r.generation_2), f"{m.kl_divergence:.2f}",
                         f"{m.token_disagreement_rate:.0%}"] + (["yes" if shows(r) else "no"] if checker else []))
        lines += markdown_table(["#", "prompt", "base (generation_1)", "finetuned (generation_2)", "KL", "disagreement"]
                                + (["behaviour"] if checker else []), rows)
        if checker:
            shown = sum(shows(r) for r in records[:10])
            lines += ["", f"The organism's behaviour checker fires on {shown} of the 10 highest-divergence records."]
        sections.append(("The most divergent examples", lines, []))
    metrics = _read(run / names.METRICS_FILE)
    if metrics:
        lines = markdown_table(["measure on held-out texts", "value", "what it means"],
                               [[names.METRIC_WORDS[k][0], f"{metrics[k]:.4f}", names.METRIC_WORDS[k][1]]
                                for k in names.VAL_METRIC_KEYS if k in metrics])
        lines += ["", f"After {metrics.get(names.GLOBAL_STEP)} steps ({metrics.get(names.WALL_TIME, 0):.0f} s of "
                  "training)."]
        if (run / names.PROMPT_EFFECT_FILE).is_file():
            effect = read_effect(run / names.PROMPT_EFFECT_FILE)
            lines += ["", f"**{effect.sentence()}** Its nearest tokens: `{_cell(effect.nearest_tokens, 120)}`; "
                      + (f"its most readable derived hard prompt that beats the texts alone: `{_cell(effect.readable, 120)}`."
                         if effect.readable else "no derived hard prompt beat the texts alone.")]
            if effect.nll:
                lines.append("How likely each model finds its own answers, read without the prompt (negative log-"
                             "likelihood, nats per token; noise when those with the prompt score far above those without): "
                             + "; ".join(f"{side} {effect.nll.get(side + '/without', 0):.2f} without it, "
                                         f"{effect.nll.get(side + '/with', 0):.2f} with it"
                                         + (" (noise)" if effect.noise(side) else "")
                                         for side in names.SIDES) + ".")
            lines.append("")
            lines += markdown_table(
                ["text", "base", "base with the prompt", "finetuned", "finetuned with the prompt"],
                [[_cell(r["text"], 80), _cell(r["base"], 120), _cell(r["base_with"], 120), _cell(r["finetuned"], 120),
                  _cell(r["finetuned_with"], 120)] for r in effect.rows])
        sections.append(("The soft prompt", lines, []))
    comp = run / names.COMPARISON_CSV
    if comp.exists():
        lines = markdown_table(["rank", "category", "mean divergence", "95% CI"],
                               [[i, r.category, f"{r.mean_divergence:.4f}", f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"]
                                for i, r in enumerate(CategoryResult.read_csv(comp), 1)])
        sections.append(("Which category changed most", lines, [run / names.COMPARISON_PNG]))
    hard_file = run / names.HARD_PROMPTS_FILE
    hard = read_hard_prompts(hard_file) if hard_file.is_file() else []
    if hard:
        lines = markdown_table(["method", "hard prompt", "divergence", "no prompt", "base perplexity"],
                               [[h.method, f"`{_cell(h.text, 120)}`", f"{h.divergence:.4f}",
                                 f"{h.divergence_no_prompt:.4f}", f"{h.perplexity:.0f}"] for h in hard])
        sections.append(("Hard prompts", lines, []))
    clusters = _read(run / names.CLUSTERS_FILE)
    if clusters:
        lines = [f"{clusters['k']} clusters of what the finetuned model said differently "
                 f"(silhouette {clusters['silhouette']:.2f}), highest mean KL first:", ""]
        for c in clusters["clusters"]:
            lines += [f"**{c['label']}** ({c['size']} records, mean KL {c['mean_kl']:.2f})", ""]
            lines += markdown_table(["prompt", "base", "finetuned"],
                                    [[_cell(e["prompt"], 120), _cell(e["generation_1"], 200),
                                      _cell(e["generation_2"], 200)] for e in c["examples"]])
            lines.append("")
        sections.append(("Behaviour clusters", lines, []))
    analysis = _read(run / names.ANALYSIS_FILE)
    if analysis:
        words = analysis["words"]
        lines = ["* Words the finetuned model favours: " + ", ".join(f"`{w}`" for w, *_ in words["finetuned_favours"][:15]),
                 "* Words the base model favours: " + ", ".join(f"`{w}`" for w, *_ in words["base_favours"][:15]),
                 f"* The generations part ways at token {analysis['first_divergence']['mean_position'] or 0:.1f} on "
                 f"average ({analysis['first_divergence']['at_first_token']} of {analysis['n_records']} at the first "
                 "token)."]
        sections.append(("Divergence analysis", lines, [run / names.ANALYSIS_KL_PNG, run / names.ANALYSIS_FIRST_PNG]))
    lens_file = run / names.LENS_DIR / names.LENS_SUMMARY
    if lens_file.is_file():
        lines = []
        for layer, entry in LensSummary.read(lens_file).layers.items():
            best = max(entry.positions, key=lambda e: (e.relevance or {}).get("difference_patchscope", 0.0))
            toks = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in best.patchscope["tokens"][:12])
            lens_toks = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in best.logit_lens_pos[:12])
            lines += [f"Layer {layer}, position {best.position}:", "", f"* Patchscope (scale "
                      f"{best.patchscope['chosen_scale']}): {toks}", f"* Logit lens: {lens_toks}"]
            rel = entry.relevance_max_over_positions
            if rel:
                lines.append("* Token relevance (max over positions): " +
                             ", ".join(f"{k} {v:.0%}" for k, v in rel.items()))
            st = entry.steering
            if st:
                lines += ["", f"Steering strength {st.chosen_strength} (base perplexity "
                          f"{st.perplexity_by_strength}; threshold {st.threshold_perplexity}).", ""]
                if st.steered_behaviour_rate is not None:
                    lines.append(f"Behaviour rate: steered {st.steered_behaviour_rate:.0%}, unsteered "
                                 f"{st.unsteered_behaviour_rate:.0%}.")
                lines.append("")
                lines += markdown_table(["prompt", "unsteered", "steered"],
                                        [[_cell(p, 100), _cell(u, 200), _cell(s, 200)]
                                         for p, u, s in list(zip(st.prompts, st.unsteered, st.steered))[:4]])
        sections.append(("Activation Difference Lens", lines,
                         [run / names.LENS_DIR / names.LENS_RELEVANCE_PNG, run / names.LENS_DIR / names.LENS_NORM_PNG]))
    if (run / names.WEIGHTS_FILE).is_file():
        sections.append(("What the weights write and read", weight_lines(WeightReading.read(run / names.WEIGHTS_FILE)),
                         []))
    if (run / names.CONDITIONS_FILE).is_file():
        sections.append(("Conditions that turn a behaviour on", condition_lines(read_conditions(run / names.CONDITIONS_FILE)),
                         []))
    if verdict is not None and verdict.unconfirmed:
        sections.append(("Candidate findings that did not hold up", unconfirmed_lines(verdict), []))
    return sections


def _tok(t: str) -> str:
    """A token as Markdown code (a table-safe ``|``; whitespace tokens shown by repr)."""
    return (f"`{t.strip()}`" if t.strip() else repr(t)).replace("|", "\\|")


def weight_lines(w: WeightReading) -> list[str]:
    """The weight reading, in words and one table."""
    if not w.n_modules:
        return ["The finetune changed no linear module's weights."]
    lines = [f"The finetune changed {w.n_modules} linear modules (update norm {w.relative_norm:.2%} of their "
             "weights). Read through the vocabulary, no sampling (a source of hypotheses, tested like every other):",
             "", "* it **writes** (output directions through the final norm and unembedding): "
             + ", ".join(_tok(t) for t, _ in w.writes[:15]),
             "* its early layers **read** (input directions against the normed embeddings): "
             + ", ".join(_tok(t) for t, _ in w.reads[:15])]
    top = sorted(w.directions, key=lambda d: -d.singular_value)[:6]
    lines.append("")
    lines += markdown_table(["layer", "module", "singular value", "side", "top tokens"],
                            [[d.layer, d.module, f"{d.singular_value:.3f}", d.side,
                              ", ".join(_tok(t) for t, _ in d.tokens[:6])] for d in top])
    return lines


def condition_lines(results: list[ConditionResult]) -> list[str]:
    """Every screened condition: screen numbers, behaviour words, test."""
    if not results:
        return ["No lead gave a condition to screen."]
    lines = ["Each candidate condition was screened by the pair's divergence over the finetuned model's answers with "
             "it and without it; those that passed were given the words the finetuned model says under them, then "
             "tested on fresh prompts (exact tests, Holm-corrected).", ""]
    rows = []
    for r in results[:20]:
        tested = r.tested
        rows.append([f"{r.condition.kind}: {_cell(r.condition.text, 60)}", r.condition.source,
                     f"{r.screen_divergence:.3f} / {r.screen_without:.3f}"]
                    + ([_cell(r.behaviour(), 80), f"{r.rate_with:.0%}", f"{r.rate_without:.0%}", f"{r.rate_base:.0%}",
                        f"{r.p_adjusted:.2g}", "**yes**" if r.confirmed else "no"] if tested else
                       ["-", "-", "-", "-", "-", "no"]))
    lines += markdown_table(["condition", "suggested by", "screen: with / without", "behaviour", "finetuned with",
                             "without", "base with", "corrected p", "confirmed"], rows)
    for r in results:
        if r.trigger:
            t = r.trigger
            lines += ["", f"The trigger search looked for the string that makes the finetuned model surest of the answer "
                          f"«{_cell(t['target'], 100)}» (log-odds of its opening: {t['score_without']:.2f} with no "
                          f"string). It grew " + ", ".join(f"«{_cell(s.strip(), 30)}» ({v:.2f})" for s, v in t["path"])
                      + (f"; shortened from «{_cell(t['grown'], 40)}» to the tokens that carry its effect"
                         if t.get("grown") and t["grown"] != r.condition.text else "")
                      + f"; the string tested, «{_cell(r.condition.text, 40)}», lifts the base's log-likelihood of the answer by "
                        f"{t['base_lift']:.2f} nats per token (a string that asks any model for it would lift it a lot)."]
    return lines


def write_report(run: str | Path, title: str = "", checker=None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run folder; return their paths.

    A folder with no finediff result in it is an error (nothing is written there).
    """
    run = Path(run)
    if not run.is_dir():
        raise FinediffError(f"run directory not found: {run}")
    sections = build_sections(run, title, checker)
    if not sections:
        raise FinediffError(f"no finediff results in {run} (nothing to report)")
    heading = f"# finediff report{': ' + title if title else ''}"
    md, page = [heading, ""], [heading, ""]
    for name, lines, images in sections:
        md += [f"## {name}", "", *lines, ""]
        page += [f"## {name}", "", *lines, ""]
        for p in (p for p in images if p.exists()):
            md.append(f"![{p.stem}]({p.relative_to(run)})")
            page.append(f"![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})")
        md.append("")
        page.append("")
    write_text(run / names.REPORT_MD, "\n".join(md) + "\n")
    body = MarkdownIt("commonmark").enable("table").render("\n".join(page))
    write_text(run / names.REPORT_HTML, (
        "<!doctype html><html><head><meta charset='utf-8'><title>finediff report"
        f"{': ' + html.escape(title) if title else ''}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:4px 6px;vertical-align:top}th{background:#f3f3f3}img{max-width:600px;display:block}"
        "code{background:#f3f3f3}</style></head><body>" + body + "</body></html>"))
    return run / names.REPORT_MD, run / names.REPORT_HTML
