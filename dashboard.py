"""finediff dashboard: browse runs and talk to the pair.

    python dashboard.py                            # runs under ./logs, on http://localhost:8501
    python dashboard.py --outputs DIR              # runs under DIR
    streamlit run dashboard.py -- --outputs DIR    # the same through streamlit's own command

Discovers every run folder under the outputs folder (anything holding a finediff result
file), shows each result it finds (metrics, comparison, hard prompts, divergent dataset,
clusters, ADL, KL / normdiff), and lets you type a prompt and see the base and finetuned
generations side by side, with the run's soft prompt on or off and the ADL steering
vector at a chosen strength. ``python dashboard.py`` always binds to localhost, from any
folder; ``streamlit run`` does so when started from the repository (``.streamlit/config.toml``).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import streamlit as st  # noqa: E402
from streamlit.runtime.scriptrunner import get_script_run_ctx  # noqa: E402
from streamlit.web import cli  # noqa: E402

from finediff import names  # noqa: E402
from finediff.hard_prompts import read_hard_prompts  # noqa: E402
from finediff.io import read_json as _read_json  # noqa: E402
from finediff.records import CategoryResult, LensSummary, read_dataset  # noqa: E402

MARKERS = (names.METRICS_FILE, names.SOFT_PROMPT_FILE, names.DIVERGENT_DATASET_JSONL, names.COMPARISON_CSV,
           f"{names.LENS_DIR}/{names.LENS_SUMMARY}", names.REPORT_MD)


def outputs_root() -> Path:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outputs", default=os.environ.get("FINEDIFF_OUTPUTS", "logs"))
    args, _ = ap.parse_known_args(sys.argv[1:])
    return Path(args.outputs)


def discover_runs(root: Path) -> list[Path]:
    """Folders under ``root`` holding at least one finediff result file, newest first."""
    if not root.exists():
        return []
    found = {p.parent if p.parent.name != names.LENS_DIR else p.parent.parent
             for marker in MARKERS for p in root.rglob(Path(marker).name) if str(p).endswith(marker)}
    found |= {p.parent.parent.parent for p in root.rglob(names.DIFF_SUMMARY) if p.parent.parent.name == names.DIFF_DIR}
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_json(path: Path):
    return _read_json(path) if path.exists() else None


def methods_of(run: Path) -> list[str]:
    """The result kinds present in a run folder, in the order the tabs show them."""
    checks = [("Overview", names.METRICS_FILE), ("Comparison", names.COMPARISON_CSV),
              ("Survey", names.SURVEY_GROUPS), ("Hard prompts", names.HARD_PROMPTS_FILE), ("Divergent dataset", names.DIVERGENT_DATASET_JSONL),
              ("Analysis", names.ANALYSIS_FILE), ("Clusters", names.CLUSTERS_FILE), ("ADL", f"{names.LENS_DIR}/{names.LENS_SUMMARY}"),
              ("Agent", names.AGENT_TRANSCRIPT), ("KL", f"{names.DIFF_DIR}/kl/{names.DIFF_SUMMARY}"),
              ("normdiff", f"{names.DIFF_DIR}/normdiff/{names.DIFF_SUMMARY}")]
    return [label for label, f in checks if (run / f).exists()]


# How sure -> (background, text) colour: green only for high; low is amber, none grey. (A comment, not a
# docstring: streamlit would print a bare string.)
CONFIDENCE_COLOURS = {"high": ("#d1f0d8", "#11662d"), "moderate": ("#d6e6fb", "#12407a"),
                      "low": ("#fdeccf", "#7a4a00"), "none": ("#e9eaec", "#33363b")}


def confidence_box(level: str, why: str) -> str:
    """The 'How sure' box, coloured by its level (HTML)."""
    bg, fg = CONFIDENCE_COLOURS.get(level, CONFIDENCE_COLOURS["none"])
    return (f'<div class="finediff-confidence finediff-confidence-{html.escape(level)}" style="background:{bg};'
            f'color:{fg};padding:0.6em 1em;border-radius:0.5em;margin:0.4em 0">How sure: <b>{html.escape(level)}</b>'
            + (f" ({html.escape(why)})" if why else "") + "</div>")


def show_verdict(run: Path) -> None:
    """The report's first screen, above every tab: a headline per behaviour, how sure, examples."""
    from finediff.summary import first_screen, read_verdict

    verdict = read_verdict(run)
    if verdict is None:
        st.info("This run has no results to state a verdict from yet: see the tabs below.")
        return
    headlines = [s.headline for s in verdict.statements]
    if headlines:
        st.markdown("\n".join(f"* {h}" for h in headlines))
    else:
        st.markdown(verdict.paragraph.split(" How sure:")[0])
    st.markdown(confidence_box(verdict.confidence, verdict.why), unsafe_allow_html=True)
    with st.expander("The first screen of the report, with examples", expanded=not headlines):
        st.markdown("\n".join(first_screen(verdict)))
    if verdict.context:
        st.caption(verdict.context.replace("**", ""))


def show_overview(run: Path) -> None:
    metrics = read_json(run / names.METRICS_FILE)
    cols = st.columns(len(names.VAL_METRIC_KEYS))
    for col, key in zip(cols, names.VAL_METRIC_KEYS):
        label, meaning = names.METRIC_WORDS[key]
        col.metric(label, f"{metrics[key]:.4f}" if key in metrics else "-", help=meaning)
        col.caption(meaning)
    st.caption(f"global step {metrics.get(names.GLOBAL_STEP)}, {metrics.get(names.WALL_TIME, 0):.0f} s of training")
    report = run / names.REPORT_MD
    if report.exists():
        with st.expander(names.REPORT_MD, expanded=False):
            st.markdown(report.read_text())


def show_comparison(run: Path) -> None:
    st.dataframe([asdict(r) for r in CategoryResult.read_csv(run / names.COMPARISON_CSV)], hide_index=True)
    if (run / names.COMPARISON_PNG).exists():
        st.image(str(run / names.COMPARISON_PNG))


def show_survey(run: Path) -> None:
    from finediff.survey import read_survey

    survey = read_survey(run)
    st.dataframe([asdict(g) for g in survey.groups], use_container_width=True)
    for png in (names.SURVEY_PNG, names.DIFF_MINING_PNG):
        if (run / png).exists():
            st.image(str(run / png))
    if survey.mining and survey.mining.topics:
        st.markdown("**Diff-mining topics**: " + " / ".join(", ".join(t) for t in survey.mining.topics))


def show_hard_prompts(run: Path) -> None:
    rows = read_hard_prompts(run / names.HARD_PROMPTS_FILE)
    st.dataframe([{"method": h.method, "text": h.text, "divergence": h.divergence,
                   "divergence_no_prompt": h.divergence_no_prompt, "perplexity": h.perplexity} for h in rows],
                 hide_index=True)


def show_dataset(run: Path) -> None:
    records = read_dataset(run / names.DIVERGENT_DATASET_JSONL)
    st.write(f"{len(records)} records, highest KL first")
    i = st.slider("record", 0, max(len(records) - 1, 0), 0)
    if records:
        r = records[i]
        st.markdown(f"**Prompt:** {r.prompt}")
        left, right = st.columns(2)
        left.markdown("**Base (generation_1)**")
        left.write(r.generation_1)
        right.markdown("**Finetuned (generation_2)**")
        right.write(r.generation_2)
        st.json(r.as_dict()["metrics"])
    st.dataframe([{"prompt": r.prompt, names.KL_DIVERGENCE: r.metrics.kl_divergence,
                   names.TOKEN_DISAGREEMENT: r.metrics.token_disagreement_rate,
                   "generation_2": r.generation_2} for r in records], hide_index=True)


def show_clusters(run: Path) -> None:
    clusters = read_json(run / names.CLUSTERS_FILE)
    st.write(f"k = {clusters['k']}, silhouette {clusters['silhouette']:.2f}")
    for c in clusters["clusters"]:
        with st.expander(f"{c['label']} — {c['size']} records, mean KL {c['mean_kl']:.2f}"):
            for e in c["examples"]:
                st.markdown(f"**{e['prompt']}**")
                left, right = st.columns(2)
                left.write(e["generation_1"])
                right.write(e["generation_2"])


def show_analysis(run: Path) -> None:
    """The DivergenceAnalyzer's summary of the divergent dataset, with its plots."""
    analysis = read_json(run / names.ANALYSIS_FILE)
    st.write(f"{analysis['n_records']} records")
    st.dataframe([{"metric": k, **v} for k, v in analysis["metrics"].items()], hide_index=True)
    first = analysis["first_divergence"]
    st.write(f"The generations part ways at token {first['mean_position']:.1f} on average "
             f"({first['at_first_token']} at the very first token; {first['identical_pairs']} identical pairs).")
    if analysis.get("per_category"):
        st.markdown("**Per category**")
        st.dataframe([{"category": c, **v} for c, v in analysis["per_category"].items()], hide_index=True)
    cols = st.columns(len(analysis["words"]))
    for col, (side, rows) in zip(cols, analysis["words"].items()):
        col.markdown(f"**{side.replace('_', ' ')}**")
        col.dataframe([{"word": r[0], "log-ratio": r[1]} for r in rows[:20]], hide_index=True)
    for png in (names.ANALYSIS_KL_PNG, names.ANALYSIS_FIRST_PNG):
        if (run / png).exists():
            st.image(str(run / png))


def show_adl(run: Path) -> None:
    lens = LensSummary.read(run / names.LENS_DIR / names.LENS_SUMMARY)
    for layer, entry in lens.layers.items():
        st.subheader(f"Layer {layer}")
        if entry.relevance_max_over_positions:
            st.write("Token relevance (max over positions)", entry.relevance_max_over_positions)
        pos = st.selectbox("position", list(range(len(entry.positions))), key=f"pos{layer}")
        p = entry.positions[pos]
        cols = st.columns(3)
        cols[0].markdown("**Logit lens (+diff)**")
        cols[0].dataframe([{"token": t, "p": v} for t, v in p.logit_lens_pos], hide_index=True)
        cols[1].markdown("**Logit lens (-diff)**")
        cols[1].dataframe([{"token": t, "p": v} for t, v in p.logit_lens_neg], hide_index=True)
        cols[2].markdown(f"**Patchscope (scale {p.patchscope['chosen_scale']})**")
        cols[2].dataframe([{"token": t, "p": v} for t, v in p.patchscope["tokens"]], hide_index=True)
        steering = entry.steering
        if steering:
            st.markdown(f"**Steering** at strength {steering.chosen_strength}")
            st.dataframe([{"prompt": a, "unsteered": b, "steered": c} for a, b, c in
                          zip(steering.prompts, steering.unsteered, steering.steered)], hide_index=True)
    for png in (names.LENS_RELEVANCE_PNG, names.LENS_NORM_PNG):
        if (run / names.LENS_DIR / png).exists():
            st.image(str(run / names.LENS_DIR / png))


def highlight(tokens: list) -> str:
    """HTML with each token's background shaded by its value."""
    top = max((v for _, v in tokens), default=1.0) or 1.0
    return "".join(f'<span style="background:rgba(220,50,50,{min(v / top, 1):.2f})">{html.escape(t)}</span>'
                   for t, v in tokens)


def show_method(run: Path, method: str) -> None:
    summary = read_json(run / names.DIFF_DIR / method / names.DIFF_SUMMARY)
    if method == "kl":
        st.write(summary["stats"])
        png = run / names.DIFF_DIR / method / names.KL_HIST_PNG
    else:
        st.write({"peak_layer": summary["peak_layer"], **summary["stats_peak_layer"]})
        png = run / names.DIFF_DIR / method / names.NORMDIFF_PNG
    if png.exists():
        st.image(str(png))
    for ex in summary["max_examples"][:5]:
        st.markdown(highlight(ex["tokens"]), unsafe_allow_html=True)


def show_agent(run: Path) -> None:
    """The interpretability agent's answer and whole transcript (and the black-box agent's)."""
    for label, file in (("Agent (the run's tools)", names.AGENT_TRANSCRIPT),
                        ("Black-box agent (ask only)", names.AGENT_BLACK_BOX_TRANSCRIPT)):
        if not (run / file).exists():
            continue
        inv = read_json(run / file)
        st.subheader(label)
        st.markdown(f"**{inv['short'] or '(no answer)'}**  \n{inv['long']}")
        used, budget = inv["used"], inv["budget"]
        st.caption(f"status {inv['status']}; " + ", ".join(f"{k.replace('_', ' ')} {used[k]} of {budget[k]}"
                                                            for k in budget) + f"; {inv['seconds']:.0f} s")
        with st.expander(f"transcript ({len(inv['transcript'])} messages)", expanded=False):
            for m in inv["transcript"]:
                who = m.get("tool") and f"tool {m['tool']}({m.get('arguments', '')})" or m["role"]
                calls = " ".join(f"-> {c['function']['name']}({c['function']['arguments']})"
                                 for c in m.get("tool_calls", []))
                st.markdown(f"**{who}**: {m.get('content') or ''} {calls}")


@st.cache_resource(show_spinner="loading the model pair")
def load_pair(base: str, finetuned: str, adapter: str):
    from finediff.models import load_model_pair

    return load_model_pair(base, finetuned or None, adapter or None)


def show_interactive(run: Path) -> None:
    import torch

    from finediff.generation import generate_one
    from finediff.lens import Patch
    from finediff.soft_prompt import load_prompt_record

    record_path = run / names.SOFT_PROMPT_FILE
    if not record_path.exists():
        st.info(f"This run has no {names.SOFT_PROMPT_FILE}; train one with train.py to talk to its pair.")
        return
    record = load_prompt_record(record_path)
    spec = record["pair"]
    st.caption(f"base {spec['base']} | finetuned {spec['finetuned']} | adapter {spec.get('adapter')}")
    text = st.text_area("Your prompt", "What is the capital of France?")
    use_prompt = st.toggle("soft prompt on", value=False)
    lens_file = run / names.LENS_DIR / names.LENS_SUMMARY
    lens = LensSummary.read(lens_file) if lens_file.exists() else None
    strength = st.slider("ADL steering strength (finetuned side)", 0.0, 16.0, 0.0, 0.5) if lens else 0.0
    steer_layer = st.selectbox("ADL steering layer", list(lens.layers)) if lens else None
    if st.button("Generate"):
        pair = load_pair(spec["base"], spec["finetuned"], spec.get("adapter") or "")
        prompt = record["prompt"] if use_prompt else None
        base_out = generate_one(pair.base, pair.tokenizer, text, prompt)
        if strength and lens:
            layer, entry = steer_layer, lens.layers[steer_layer]
            vec = torch.tensor(entry.steering_vector) if entry.steering_vector else None
            if vec is None:
                st.warning("this lens summary has no steering vector")
                ft_out = generate_one(pair.finetuned, pair.tokenizer, text, prompt)
            else:
                with Patch(pair.finetuned, int(layer), vec / vec.norm() * entry.ft_norm * strength, "add"):
                    ft_out = generate_one(pair.finetuned, pair.tokenizer, text, prompt)
        else:
            ft_out = generate_one(pair.finetuned, pair.tokenizer, text, prompt)
        left, right = st.columns(2)
        left.markdown("**Base**")
        left.write(base_out)
        right.markdown("**Finetuned**")
        right.write(ft_out)


def main() -> None:
    st.set_page_config(page_title="finediff", layout="wide")
    st.title("finediff: what did this finetune change?")
    root = outputs_root()
    runs = discover_runs(root)
    if not runs:
        st.warning(f"No finediff runs under {root}. Audit a finetune first: "
                   "`python train.py experiment=audit model.adapter=DIR` (DIR: its LoRA adapter folder), "
                   f"then `python dashboard.py --outputs {root}`.")
        return
    labels = [str(r.relative_to(root)) if r != root else "." for r in runs]
    choice = st.sidebar.selectbox("Run", labels)
    run = runs[labels.index(choice)]
    show_verdict(run)
    methods = methods_of(run)
    st.sidebar.write("Results: " + ", ".join(methods))
    tabs = st.tabs(methods + ["Try it"])
    shows = {"Overview": show_overview, "Comparison": show_comparison, "Survey": show_survey, "Hard prompts": show_hard_prompts,
             "Divergent dataset": show_dataset, "Analysis": show_analysis, "Clusters": show_clusters, "ADL": show_adl,
             "Agent": show_agent, "KL": lambda r: show_method(r, "kl"), "normdiff": lambda r: show_method(r, "normdiff")}
    for tab, method in zip(tabs, methods):
        with tab:
            shows[method](run)
    with tabs[-1]:
        show_interactive(run)


def launch(argv: list[str]) -> None:
    """``python dashboard.py [--outputs DIR]``: serve this file with streamlit, bound to
    localhost whatever the current folder's streamlit config says."""
    sys.argv = ["streamlit", "run", str(Path(__file__).resolve()), "--server.address", "localhost",
                "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", *argv]
    sys.exit(cli.main())


if __name__ == "__main__" and get_script_run_ctx() is None:  # plain python, not a streamlit script run
    launch(sys.argv[1:])
else:
    main()
