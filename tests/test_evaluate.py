"""evaluate.py tasks on the tiny pair: compare, hard_prompts, generate, and their errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from finediff import names
from finediff.errors import FinediffError
from finediff.hard_prompts import METHODS
from finediff.answers import AnswerSettings
from tests.conftest import ROOT, compose, run_eval, tiny_overrides


def test_compare_writes_sorted_csv_md_png(tiny_dirs, tmp_path):
    result = run_eval(tiny_dirs, tmp_path, "task=compare", "evidence.compare.max_texts_per_category=10")
    rows = list(csv.DictReader((tmp_path / names.COMPARISON_CSV).open()))
    assert list(rows[0])[0] == "category"
    means = [float(r["mean_divergence"]) for r in rows]
    assert means == sorted(means, reverse=True) and [r["category"] for r in rows] == result["ranking"]
    assert all(float(r["ci_low"]) <= float(r["mean_divergence"]) <= float(r["ci_high"]) for r in rows)
    assert (tmp_path / names.COMPARISON_PNG).read_bytes()[:4] == b"\x89PNG"
    assert "| 1 |" in (tmp_path / names.COMPARISON_MD).read_text()


@pytest.fixture(scope="module")
def run(finished_run):
    """The shared finished run on the tiny pair, every evidence step included."""
    return finished_run


def test_hard_prompts_task_scores_each_distinct_prompt(tiny_dirs, run, tmp_path):
    res = run_eval(tiny_dirs, tmp_path, "task=hard_prompts", f"task.prompts_file={run / names.HARD_PROMPTS_FILE}",
                   "task.max_texts_per_category=8")
    saved = json.loads((tmp_path / names.HARD_PROMPT_EVAL_FILE).read_text())
    assert saved["prompts"][0]["mean_divergence"] == res["best_prompt_mean_divergence"]
    rows = [json.loads(line) for line in (run / names.HARD_PROMPTS_FILE).read_text().splitlines()]
    distinct = {(r["text"], tuple(r["token_ids"])) for r in rows}  # one row per method; repeats once
    assert len(rows) == len(METHODS) and len(saved["prompts"]) == len(distinct) and saved["n_texts"] == 8
    assert saved["baseline_mean_divergence"] <= saved["max_kl_texts_mean_divergence"] <= saved["baseline_max_divergence"]
    assert saved["best_prompt_beats_max_kl_texts"] == (saved["best_prompt_mean_divergence"]
                                                       > saved["max_kl_texts_mean_divergence"])
    assert names.SOFT_PROMPT_MEAN_DIVERGENCE not in saved


def test_hard_prompts_task_scores_the_runs_soft_prompt_on_the_same_texts(tiny_dirs, run, tmp_path, tiny_pair):
    from finediff.data import load_category
    from finediff.divergent_dataset import text_divergences

    res = run_eval(tiny_dirs, tmp_path, "task=hard_prompts", f"task.prompts_file={run / names.HARD_PROMPTS_FILE}",
                   f"task.run_dir={run}", "task.max_texts_per_category=8", "task.max_prompts=1")
    base = [o for o in tiny_overrides(tiny_dirs, tmp_path, evidence=False) if not o.startswith(("logger", "trainer"))]
    cfg = compose("evaluate", base + ["task=hard_prompts"])
    texts = [x for c in cfg.task.categories for x in load_category(
        str(c), cfg.data.max_texts_per_category, seed=cfg.seed).val[:8]]
    prompt = torch.load(run / names.SOFT_PROMPT_FILE, weights_only=True)["prompt"]
    direct = text_divergences(tiny_pair, texts, prompt=prompt, max_length=cfg.data.max_length,
                              answers=AnswerSettings(tokens=int(cfg.task.max_new_tokens)))
    assert res[names.SOFT_PROMPT_MEAN_DIVERGENCE] == pytest.approx(sum(direct) / len(direct), rel=1e-4)
    with pytest.raises(FinediffError, match="no soft_prompt.pt in run directory"):
        run_eval(tiny_dirs, tmp_path / "bad", "task=hard_prompts", f"task.prompts_file={run / names.HARD_PROMPTS_FILE}",
                 f"task.run_dir={tmp_path}")


def test_generate_task_rebuilds_the_divergent_dataset(tiny_dirs, run, tmp_path):
    run_eval(tiny_dirs, tmp_path, "task=generate", f"task.run_dir={run}", "generation.max_new_tokens=6",
             "generation.num_generations_per_prompt=2", "data.max_texts_per_category=10")
    records = torch.load(tmp_path / names.DIVERGENT_DATASET_PT, weights_only=True)
    assert len(records) == (2 * 3 + 5) * 2
    kl = [r["metrics"]["kl_divergence"] for r in records]
    assert kl == sorted(kl, reverse=True) and kl[0] > 0
    # the seed script's input: a divergent_dataset.pt as the prompts file
    res = run_eval(tiny_dirs, tmp_path / "hp", "task=hard_prompts", f"task.prompts_file={tmp_path / names.DIVERGENT_DATASET_PT}",
                   "task.max_texts_per_category=4", "task.max_prompts=2")
    assert len(res["prompts"]) == 2


def test_analyze_task_rebuilds_the_report(tiny_dirs, run, tmp_path):
    (run / names.REPORT_MD).unlink()
    run_eval(tiny_dirs, tmp_path, "task=analyze", f"task.run_dir={run}", "experiment=sandbagging")
    report = (run / names.REPORT_MD).read_text()
    for heading in ("What changed", "The soft prompt", "Which category changed most", "Hard prompts",
                    "Behaviour clusters", "Divergence analysis", "Activation Difference Lens"):
        assert f"## {heading}" in report
    assert "| behaviour |" in report  # the organism's checker marks the examples
    page = (run / names.REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") >= 5 and "<table>" in page
    clusters = json.loads((run / names.CLUSTERS_FILE).read_text())
    assert clusters["k"] >= 2 and sum(c["size"] for c in clusters["clusters"]) == 22
    per_category = json.loads((run / names.ANALYSIS_FILE).read_text())["per_category"]
    assert sum(v["n"] for v in per_category.values()) == 22 and set(per_category) - {"other"}


def test_evidence_task_resumes_where_the_run_stopped(tiny_dirs, run, tmp_path):
    """Only the steps whose output is missing run again; the others are read back."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    kept = (copy / names.HARD_PROMPTS_FILE).read_text()
    for name in (names.DIVERGENT_DATASET_PT, names.DIVERGENT_DATASET_JSONL, names.REPORT_MD, names.ANALYSIS_FILE):
        (copy / name).unlink()
    run_eval(tiny_dirs, tmp_path / "unused", "task=evidence", f"task.run_dir={copy}", *[
        "evidence.steps=[hard_prompts,divergent_dataset,analysis,report]", "generation.max_new_tokens=8",
        "generation.num_generations_per_prompt=2"], values={"finediff.pipeline.steps.DATASET_MAX_SCORED_TEXTS": 24})
    assert (copy / names.HARD_PROMPTS_FILE).read_text() == kept  # read back, not searched again
    assert len(torch.load(copy / names.DIVERGENT_DATASET_PT, weights_only=True)) == (2 * 3 + 5) * 2
    assert (copy / names.ANALYSIS_FILE).exists() and (copy / names.REPORT_MD).exists()


def test_task_errors(tiny_dirs, tmp_path):
    with pytest.raises(FinediffError, match="prompts file not found: /no/file.jsonl"):
        run_eval(tiny_dirs, tmp_path, "task=hard_prompts", "task.prompts_file=/no/file.jsonl")
    with pytest.raises(FinediffError, match="needs task.run_dir"):
        run_eval(tiny_dirs, tmp_path, "task=generate")
    with pytest.raises(FinediffError, match="no soft_prompt.pt in run directory"):
        run_eval(tiny_dirs, tmp_path, "task=generate", f"task.run_dir={tmp_path}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(FinediffError, match="bad.jsonl:2: expected a 'text' or 'prompt' string"):
        run_eval(tiny_dirs, tmp_path, "task=hard_prompts", f"task.prompts_file={bad}")


def test_diff_pipeline_preprocess_then_methods(tiny_dirs, tmp_path):
    run_eval(tiny_dirs, tmp_path, "task=diff", "diffing/method=kl", "pipeline.mode=preprocessing",
             "diffing.max_texts=12", "diffing.n_tokens=16")
    assert (tmp_path / names.ACTIVATION_CACHE_DIR / "index.json").exists()
    assert not (tmp_path / names.DIFF_DIR).exists()
    kl = run_eval(tiny_dirs, tmp_path, "task=diff", "diffing/method=kl", "pipeline.mode=diffing")["summary"]
    assert kl["stats"]["n_tokens"] == 12 * 16 and kl["stats"]["mean"] > 0 and len(kl["max_examples"]) == 10
    nd = run_eval(tiny_dirs, tmp_path, "task=diff", "diffing/method=normdiff", "pipeline.mode=diffing")["summary"]
    assert set(nd["mean_by_layer"]) == {"0", "1"} and nd["peak_layer"] in (0, 1)
    for method, png in (("kl", names.KL_HIST_PNG), ("normdiff", names.NORMDIFF_PNG)):
        assert (tmp_path / names.DIFF_DIR / method / names.DIFF_SUMMARY).exists()
        assert (tmp_path / names.DIFF_DIR / method / png).exists()
    with pytest.raises(FinediffError, match="unknown pipeline.mode 'both'"):
        run_eval(tiny_dirs, tmp_path, "task=diff", "pipeline.mode=both")
    with pytest.raises(FinediffError, match="no activation cache"):
        run_eval(tiny_dirs, tmp_path / "empty", "task=diff", "pipeline.mode=diffing")


def test_response_divergence_matches_a_direct_computation(tiny_pair):
    """Compare's default score: KL(ft||base) averaged over the finetuned model's greedy
    answer, equal to one unbatched forward per text, and 0 for a model against itself."""
    from types import SimpleNamespace

    from finediff.data import format_text
    from finediff.divergence import token_divergence
    from finediff.divergent_dataset import response_divergences
    from finediff.generation import generate

    texts = ["What is 2 + 2?", "Tell me about the sea and the many ships that sail on it.", "Hi"]
    got = response_divergences(tiny_pair, texts, max_new_tokens=6, batch_size=2)
    for text, value in zip(texts, got):
        (_, ids), = generate(tiny_pair.finetuned, tiny_pair.tokenizer, [text], max_new_tokens=6, return_ids=True,
                             progress=False)
        prompt = format_text(tiny_pair.tokenizer, text)
        x = torch.tensor([prompt + ids])
        with torch.no_grad():
            lf, lb = tiny_pair.finetuned(x).logits[0], tiny_pair.base(x).logits[0]
        pos = slice(len(prompt) - 1, len(prompt) - 1 + len(ids))
        want = token_divergence(lf[pos], lb[pos], "kl_ft_base").mean().item() if ids else 0.0
        assert value == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert max(got) > 0
    same = SimpleNamespace(base=tiny_pair.finetuned, finetuned=tiny_pair.finetuned, tokenizer=tiny_pair.tokenizer)
    assert max(response_divergences(same, texts, max_new_tokens=6)) == pytest.approx(0.0, abs=1e-5)


def test_generation_keeps_the_logits_teacher_forcing_gives(tiny_pair):
    """``generate(return_logits=True)``: each row's logits at its new tokens are the ones one
    unbatched forward over prompt + answer gives (left padding in a batch changes nothing), and
    a batch split to fit the logits budget gives the same answers and logits."""
    from finediff.data import format_text
    from finediff.generation import generate
    from tests.conftest import constants

    texts = ["What is 2 + 2?", "Tell me about the sea and the many ships that sail on it.", "Hi"]
    rows = generate(tiny_pair.finetuned, tiny_pair.tokenizer, texts, max_new_tokens=6, return_logits=True,
                    progress=False)
    vocab = tiny_pair.finetuned.get_output_embeddings().weight.shape[0]
    with constants({"finediff.generation.LOGITS_BUDGET": 6 * vocab}):  # one prompt per batch
        alone = generate(tiny_pair.finetuned, tiny_pair.tokenizer, texts, max_new_tokens=6, return_logits=True,
                         progress=False)
    for text, (answer, ids, logits), (answer1, ids1, logits1) in zip(texts, rows, alone):
        assert (answer, ids) == (answer1, ids1) and logits.shape == (len(ids), vocab)
        assert torch.allclose(logits, logits1, atol=1e-4)
        prompt = format_text(tiny_pair.tokenizer, text)
        with torch.no_grad():
            want = tiny_pair.finetuned(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(ids)]
        assert torch.allclose(logits, want, atol=1e-4)
    assert any(ids for _, ids, _ in rows)


def test_prompt_records_keep_token_ids(tmp_path):
    from finediff.prompt_eval import read_prompt_records

    f = tmp_path / "hp.jsonl"
    f.write_text('{"text": "a b", "token_ids": [5, 7]}\n{"prompt": "plain"}\n')
    assert read_prompt_records(f) == [("a b", [5, 7]), ("plain", None)]
    f.write_text('{"text": "a b", "token_ids": []}\n')
    with pytest.raises(FinediffError, match="hp.jsonl:1: 'token_ids' must be a non-empty list of integers"):
        read_prompt_records(f)


def test_elicit_task_rates_each_setting_on_the_organisms_off_target_prompts(tiny_dirs, run, tmp_path):
    """Both models answer the organism's held-out off-target prompts alone, with the run's
    soft prompt and with its best hard prompt; the checker's rate per model and setting."""
    from finediff.io import read_jsonl

    res = run_eval(tiny_dirs, tmp_path, "task=elicit", f"task.run_dir={run}", "organism=sandbagging",
                   "task.max_new_tokens=4")
    saved = json.loads((run / names.ELICITATION_FILE).read_text())
    off = [r for _, r in read_jsonl(ROOT / "data" / "organisms" / "sandbagging" / names.ORGANISM_HELDOUT_FILE)
           if r["split"] == "off_target"]
    assert saved["n"] == len(off) == res["n"] and set(saved["rates"]) == {"none", "soft", "hard"}
    best = max((json.loads(line) for line in (run / names.HARD_PROMPTS_FILE).read_text().splitlines()),
               key=lambda h: h["divergence"])
    assert saved["hard_prompt"] == best["text"]
    for setting, rates in saved["rates"].items():
        assert 0 <= rates["finetuned"] <= 1 and 0 <= rates["base"] <= 1
        assert rates["finetuned_gain"] == pytest.approx(rates["finetuned"] - saved["rates"]["none"]["finetuned"])
    assert saved["samples"]["soft"]["finetuned"][0]["prompt"] == off[0]["prompt"]
