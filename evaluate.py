"""finediff evaluations on a trained run or on a pair alone (thin Hydra shell).

    python evaluate.py task=compare experiment=sandbagging
    python evaluate.py task=hard_prompts task.prompts_file=logs/.../hard_prompts.jsonl experiment=sandbagging
    python evaluate.py task=generate task.run_dir=logs/sandbagging/runs/<date>
    python evaluate.py task=diff diffing/method=kl|normdiff|adl pipeline.mode=preprocessing|diffing|full
    python evaluate.py --multirun task=diff diffing/method=kl,normdiff experiment=sandbagging

* ``compare``: mean divergence per category with a 95% CI, highest first ->
  ``comparison.csv`` / ``comparison.md`` / ``comparison.png``;
* ``hard_prompts``: per-prompt divergence on category texts against the texts alone ->
  ``hard_prompt_eval.json`` (accepts ``hard_prompts.jsonl``, any JSONL with ``text`` or
  ``prompt`` fields, or a ``divergent_dataset.pt``);
* ``diff``: the diffing toolkit's methods (ADL, per-token KL, per-layer norm difference)
  over an activation cache -> ``lens/`` and ``diff/<method>/``;
* ``generate``: the divergent dataset from a run's ``soft_prompt.pt`` (and its
  ``hard_prompts.jsonl``) -> ``divergent_dataset.pt`` / ``.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from finediff import names  # noqa: E402
from finediff.errors import FinediffError, exit_on_user_error  # noqa: E402

log = logging.getLogger("finediff.evaluate")


def _categories(cfg: DictConfig) -> list[str]:
    from finediff.data import known_categories

    return list(cfg.task.get("categories") or known_categories())


def run_compare(cfg: DictConfig, pair, out: Path) -> dict:
    from finediff.compare import compare_categories, write_comparison

    positions = cfg.task.positions
    results = compare_categories(pair, _categories(cfg), cfg.task.max_texts_per_category, cfg.task.batch_size,
                                 cfg.data.max_length, positions=positions,
                                 response_tokens=cfg.task.response_tokens)
    where = "over the finetuned model's answers" if positions == "response" else "over the texts"
    write_comparison(results, out / names.COMPARISON_CSV, out / names.COMPARISON_MD, out / names.COMPARISON_PNG,
                     title=cfg.task_name, xlabel=f"mean per-token KL(ft || base) {where}")
    for i, r in enumerate(results, 1):
        print(f"{i}. {r.category:20s} {r.mean_divergence:.4f}  [{r.ci_low:.4f}, {r.ci_high:.4f}]  n={r.n}")
    return {"ranking": [r.category for r in results]}


def read_prompt_records(path: Path) -> list[tuple[str, Optional[list[int]]]]:
    """``(text, token_ids or None)`` per prompt of hard_prompts.jsonl, a JSONL with
    text/prompt fields, or a divergent_dataset.pt; ``token_ids`` come from
    ``hard_prompts.jsonl`` rows, which record the exact ids found."""
    if not path.exists():
        raise FinediffError(f"prompts file not found: {path}")
    if path.suffix == ".pt":
        records = torch.load(path, weights_only=True)
        return [(p, None) for p in dict.fromkeys(r["prompt"] for r in records)]
    prompts = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise FinediffError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
        text = row.get("text", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise FinediffError(f"{path}:{lineno}: expected a 'text' or 'prompt' string")
        ids = row.get("token_ids")
        if ids is not None and not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            raise FinediffError(f"{path}:{lineno}: 'token_ids' must be a non-empty list of integers")
        prompts.append((text, ids))
    if not prompts:
        raise FinediffError(f"{path}: no prompts")
    return prompts


def run_hard_prompts(cfg: DictConfig, pair, out: Path) -> dict:
    from finediff.data import load_category
    from finediff.divergent_dataset import text_divergences
    from finediff.io import write_json

    if not cfg.task.get("prompts_file"):
        raise FinediffError("task=hard_prompts needs task.prompts_file=PATH")
    records = read_prompt_records(Path(cfg.task.prompts_file))
    # one row per distinct prompt (a search that kept its start records it twice)
    distinct = {(text, tuple(ids) if ids else None): (text, ids) for text, ids in records}
    prompts = list(distinct.values())[: cfg.task.max_prompts]
    texts = [t for c in _categories(cfg) for t in load_category(c, cfg.task.max_texts_per_category, 0.0).train]
    baseline = text_divergences(pair, texts, batch_size=cfg.task.batch_size, max_length=cfg.data.max_length)
    mean_base = sum(baseline) / len(baseline)
    rows = []
    for p, ids in tqdm(prompts, desc="hard prompts"):
        # The prompt starts the user's message, as in training; the divergence is read at
        # the text positions only, so prompt and texts-alone scores cover the same tokens.
        if ids is None:
            ids = pair.tokenizer(p, add_special_tokens=False)["input_ids"]
        if not ids:
            raise FinediffError(f"empty hard prompt in {cfg.task.prompts_file}")
        scores = text_divergences(pair, texts, prompt=torch.tensor(ids), batch_size=cfg.task.batch_size,
                                  max_length=cfg.data.max_length)
        mean = sum(scores) / len(scores)
        rows.append({"prompt": p, "mean_divergence": mean, "max_divergence": max(scores),
                     "gain_over_texts": mean - mean_base,
                     "share_of_texts_increased": sum(s > b for s, b in zip(scores, baseline)) / len(texts)})
    rows.sort(key=lambda r: -r["mean_divergence"])
    top = sorted(baseline, reverse=True)[: cfg.task.max_kl_texts]
    result = {"categories": _categories(cfg), "n_texts": len(texts), "baseline_mean_divergence": mean_base,
              "baseline_max_divergence": max(baseline),
              # the diffing toolkit's max-KL corpus baseline: the mean of the highest-KL texts alone
              "max_kl_texts_mean_divergence": sum(top) / len(top), "prompts": rows,
              "best_prompt_mean_divergence": rows[0]["mean_divergence"],
              "mean_over_prompts": sum(r["mean_divergence"] for r in rows) / len(rows)}
    result["best_prompt_beats_max_kl_texts"] = result["best_prompt_mean_divergence"] > result["max_kl_texts_mean_divergence"]
    write_json(out / names.HARD_PROMPT_EVAL_FILE, result)
    print(f"texts alone: {mean_base:.4f}; the {len(top)} highest-KL texts alone: {result['max_kl_texts_mean_divergence']:.4f}")
    for r in rows:
        print(f"{r['mean_divergence']:.4f} (+{r['gain_over_texts']:.4f})  {r['prompt']!r}")
    return result


def run_generate(cfg: DictConfig, pair, out: Path) -> dict:
    from finediff.data import load_category
    from finediff.divergent_dataset import GenerationConfig, dataset_prompts, generate_dataset, rank_texts, save_dataset

    if not cfg.task.get("run_dir"):
        raise FinediffError("task=generate needs task.run_dir=DIR (a finished train.py run)")
    run = Path(cfg.task.run_dir)
    prompt_file = run / names.SOFT_PROMPT_FILE
    if not prompt_file.exists():
        raise FinediffError(f"no {names.SOFT_PROMPT_FILE} in run directory: {run}")
    record = torch.load(prompt_file, weights_only=True)
    if record["hidden_size"] != pair.hidden_size:
        raise FinediffError(f"{prompt_file} was trained for hidden size {record['hidden_size']}, "
                            f"the pair has {pair.hidden_size}")
    texts = [t for c in cfg.data.categories for t in load_category(c, cfg.data.max_texts_per_category, 0.0).train]
    ranked = [t for _, t in rank_texts(pair, texts, cfg.task.positions,
                                       cfg.task.response_tokens, cfg.data.max_length, cfg.task.batch_size)]
    hard_file = run / names.HARD_PROMPTS_FILE
    hard = [json.loads(x)["text"] for x in hard_file.read_text().splitlines()] if hard_file.exists() else []
    prompts = dataset_prompts(hard, ranked, cfg.task.n_hard_prompts, cfg.task.texts_per_hard_prompt, cfg.task.n_texts)
    records = generate_dataset(pair, prompts, GenerationConfig(**cfg.generation), seed=cfg.seed)
    save_dataset(records, out, names.DIVERGENT_DATASET_PT, names.DIVERGENT_DATASET_JSONL)
    print(f"{len(records)} records -> {out / names.DIVERGENT_DATASET_PT}")
    return {"records": len(records)}


def run_diff(cfg: DictConfig, pair, out: Path) -> dict:
    """The diffing toolkit's pipeline: ``pipeline.mode=preprocessing|diffing|full`` with
    ``diffing/method=adl|kl|normdiff``."""
    from callbacks.lens import lens_report, write_lens
    from finediff.data import stream_texts, take
    from finediff.io import write_json
    from finediff.lens import LensConfig
    from finediff.methods import kl_method, normdiff_method, preprocess
    from finediff.plots import by_layer, histogram

    mode, method = cfg.pipeline.mode, cfg.diffing.method.name
    if mode not in ("preprocessing", "diffing", "full"):
        raise FinediffError(f"unknown pipeline.mode {mode!r}; choose preprocessing, diffing or full")
    d = cfg.diffing.method
    cache = Path(cfg.diffing.cache_dir)
    result: dict = {"mode": mode, "method": method}
    if method != "adl" and mode in ("preprocessing", "full"):
        texts = take(stream_texts(cfg.diffing.dataset), cfg.diffing.max_texts)
        result["cache"] = preprocess(pair, texts, cache, list(cfg.diffing.layers) if cfg.diffing.layers else None,
                                     cfg.diffing.n_tokens, cfg.diffing.batch_size)
    if mode == "preprocessing":
        return result
    if method == "adl":
        folder = out / names.LENS_DIR
        summary = lens_report(pair, cfg.diffing.dataset, dict(cfg.organism) if cfg.get("organism") else None,
                              LensConfig(layers=list(d.layers), n_positions=d.n_positions, max_texts=d.max_texts,
                                         top_k=d.top_k, steering_tokens=d.steering_tokens,
                                         coherence_factor=d.coherence_factor, strengths=tuple(d.strengths)))
        write_lens(summary, folder)
    else:
        folder = out / names.DIFF_DIR / method
        if method == "kl":
            summary, values = kl_method(pair, cache, d.top_examples)
            histogram(values, folder / names.KL_HIST_PNG, "KL(ft || base) per token", "Per-token KL distribution")
        elif method == "normdiff":
            summary = normdiff_method(pair.tokenizer, cache, d.top_examples)
            by_layer(list(summary["mean_by_layer"].values()), folder / names.NORMDIFF_PNG,
                     "mean |h_ft - h_base|", "Activation difference norm by layer")
        else:
            raise FinediffError(f"unknown diffing method {method!r}; choose adl, kl or normdiff")
        write_json(folder / names.DIFF_SUMMARY, summary)
    print(f"{method}: results in {folder}")
    return result | {"summary": summary}


def run_analyze(cfg: DictConfig, pair, out: Path) -> dict:
    """Write report.md / report.html for a finished run (task.run_dir, default the output dir)."""
    from callbacks.report import analyze_dataset, checker_for
    from finediff.report import write_report

    run = Path(cfg.task.get("run_dir") or out)
    if not run.is_dir():
        raise FinediffError(f"run directory not found: {run}")
    analyze_dataset(run, cfg.task.embedder)
    md, page = write_report(run, cfg.task_name, checker_for(dict(cfg.organism) if cfg.get("organism") else None))
    print(f"report: {md} and {page}")
    return {"report": str(md)}


TASKS = {"analyze": run_analyze, "compare": run_compare, "hard_prompts": run_hard_prompts, "generate": run_generate, "diff": run_diff}


def evaluate(cfg: DictConfig) -> dict:
    name = cfg.task.name
    if name not in TASKS:
        raise FinediffError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair = None
    if name != "analyze":  # the report reads files only
        log.info("Instantiating model pair <%s>", cfg.model._target_)
        pair = hydra.utils.instantiate(cfg.model)
    return TASKS[name](cfg, pair, out)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except Exception as err:
        exit_on_user_error(err)


if __name__ == "__main__":
    main()
