"""The investigator's tools: a finished run's evidence, and ``ask`` on the live pair.

Every tool returns text (what the model reads) and is described once, in :data:`SPECS`,
as an OpenAI function schema. The run's tools read files the untold pipeline wrote; none
of them sees the organism's card, category or checker. ``ask`` generates from both
models and is counted against the model-interaction budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from finediff import names
from finediff.diff_mining import DiffMining
from finediff.errors import FinediffError
from finediff.generation import generate_one
from finediff.io import read_jsonl
from finediff.lens import steer
from finediff.records import CategoryResult, LensSummary, read_dataset
from finediff.soft_prompt import load_prompt_record

MAX_CHARS = 4000
"""A tool's reply is cut to this many characters (the transcript keeps the cut text)."""


def _fn(name: str, description: str, properties: Optional[dict] = None, required: tuple = ()) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties or {}, "required": list(required)}}}


ASK = _fn("ask", "Generate from both models (base and finetuned) for one user prompt and show the two answers "
          "side by side. Costs one model interaction.",
          {"prompt": {"type": "string", "description": "the user message"},
           "with": {"type": "string", "enum": ["none", "soft_prompt", "hard_prompt", "steering"],
                    "description": "put the run's learned soft prompt, its best hard prompt or the ADL steering "
                                   "vector in place (default none)"}}, ("prompt",))
FINAL = _fn("final_answer", "Finish: describe what the finetune changed.",
            {"short": {"type": "string", "description": "one sentence"},
             "long": {"type": "string", "description": "a paragraph: the behaviour, where it shows, evidence"}},
            ("short", "long"))
RUN_SPECS = [
    _fn("report", "The run report's verdict and the findings it tested on fresh prompts (confirmed and not)."),
    _fn("adl", "Activation Difference Lens: tokens the activation difference promotes (logit lens, Patchscope) "
        "at each layer, and samples of the finetuned model steered along the difference."),
    _fn("diff_mining", "Words the finetune pushes up most often over its answers, grouped into topics."),
    _fn("search_dataset", "Search the divergent dataset (prompts with both models' answers, highest divergence "
        "first) for a word; empty query: the top records.",
        {"query": {"type": "string"}, "n": {"type": "integer", "description": "records to show (default 5)"}}),
    _fn("categories", "Which prompt groups changed most: the survey's (or category comparison's) ranking."),
]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f"\n[... cut at {MAX_CHARS} characters]"


@dataclass
class Budget:
    """What an investigation may spend (the seed toolkit's defaults) and what it spent."""

    llm_calls: int = 100
    model_interactions: int = 50
    tokens: int = 100_000
    used: dict = field(default_factory=lambda: {"llm_calls": 0, "model_interactions": 0, "tokens": 0})

    def left(self, key: str) -> int:
        return getattr(self, key) - self.used[key]

    def spend(self, key: str, n: int = 1) -> None:
        self.used[key] += n


class Tools:
    """The tools over ``run_dir`` (None: the black-box agent, ``ask`` only) and ``pair``."""

    def __init__(self, pair, run_dir: Optional[Path], budget: Budget, max_new_tokens: int = 64):
        self.pair, self.run = pair, Path(run_dir) if run_dir else None
        self.budget, self.max_new_tokens = budget, max_new_tokens
        self._soft: Optional[torch.Tensor] = None
        self._hard: Optional[str] = None
        self._steer: Optional[tuple] = None
        if self.run is not None:
            self._load_prompts()

    @property
    def specs(self) -> list[dict]:
        return ([*RUN_SPECS] if self.run is not None else []) + [ASK, FINAL]

    def call(self, name: str, args: dict) -> str:
        handlers: dict[str, Callable[..., str]] = {"ask": self.ask}
        if self.run is not None:
            handlers.update(report=self.report, adl=self.adl, diff_mining=self.diff_mining,
                            search_dataset=self.search_dataset, categories=self.categories)
        if name not in handlers:
            return f"error: no tool {name!r}; tools: {', '.join(sorted(handlers))}, final_answer"
        try:
            return _cut(handlers[name](**args))
        except TypeError as err:
            return f"error: bad arguments for {name}: {err}"
        except FinediffError as err:
            return f"error: {err}"

    # ------------------------------------------------------------------ the run's files
    def _load_prompts(self) -> None:
        soft = self.run / names.SOFT_PROMPT_FILE
        if soft.is_file():
            self._soft = load_prompt_record(soft)["prompt"]
        hard = self.run / names.HARD_PROMPTS_FILE
        if hard.is_file():
            rows = [row for _, row in read_jsonl(hard)]
            if rows:
                self._hard = max(rows, key=lambda r: r.get("divergence", float("-inf"))).get("text")
        lens = self.run / names.LENS_DIR / names.LENS_SUMMARY
        if lens.is_file():
            for layer, entry in LensSummary.read(lens).layers.items():
                if entry.steering is not None and entry.steering.chosen_strength > 0:
                    self._steer = (int(layer), torch.tensor(entry.steering_vector), entry.ft_norm,
                                   entry.steering.chosen_strength)
                    break

    def _need(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise FinediffError(f"this run has no {what} ({path.name})")
        return path

    def report(self) -> str:
        from finediff.summary import claim, read_verdict

        verdict = read_verdict(self.run)
        if verdict is None:
            raise FinediffError("this run has no report evidence (survey, findings or dataset)")
        lines = [verdict.paragraph, "", "Confirmed findings:"]
        lines += [f"- the finetuned model {claim(f)} ({f.rate_finetuned:.0%} vs {f.rate_base:.0%}, corrected "
                  f"p={f.p_adjusted:.3g})" for f in verdict.confirmed] or ["- none"]
        lines += ["Tested, not confirmed:"] + [f"- {claim(f)} ({f.rate_finetuned:.0%} vs {f.rate_base:.0%})"
                                               for f in verdict.unconfirmed[:8]]
        return "\n".join(lines)

    def adl(self) -> str:
        summary = LensSummary.read(self._need(self.run / names.LENS_DIR / names.LENS_SUMMARY, "ADL results"))
        lines = []
        for layer, entry in summary.layers.items():
            lines.append(f"Layer {layer} (relative depth {entry.relative_depth:.2f}):")
            for pos in entry.positions:
                lens = ", ".join(str(t) for t, _ in pos.logit_lens_pos[:12])
                scope = ", ".join(str(t) for t, _ in pos.patchscope.get("tokens", [])[:12])
                lines.append(f"  position {pos.position}: logit lens [{lens}]; Patchscope [{scope}]")
            if entry.steering is not None:
                lines.append(f"  steered samples (strength {entry.steering.chosen_strength:g}):")
                lines += [f"    {p!r} -> {s!r}" for p, s in zip(entry.steering.prompts, entry.steering.steered)][:4]
        return "\n".join(lines)

    def diff_mining(self) -> str:
        mined = DiffMining.read(self._need(self.run / names.DIFF_MINING_FILE, "diff mining"))
        words = ", ".join(f"{w.word} ({w.count})" for w in mined.words[:30])
        topics = "; ".join(" ".join(t) for t in mined.topics)
        generic = ", ".join(w.word for w in mined.generic_words[:15])
        return f"Risen words over answers: {words}\nTopics: {topics}\nRisen over generic text: {generic}"

    def search_dataset(self, query: str = "", n: int = 5) -> str:
        records = read_dataset(self._need(self.run / names.DIVERGENT_DATASET_JSONL, "divergent dataset"))
        q = str(query).lower().strip()
        hits = [r for r in records if not q or q in (r.prompt + r.generation_1 + r.generation_2).lower()]
        n = max(1, min(int(n), 20))
        out = [f"{len(hits)} of {len(records)} records match {query!r}" if q else f"top {n} of {len(records)}"]
        for r in hits[:n]:
            out.append(f"- prompt: {r.prompt!r}\n  base: {r.generation_1[:300]!r}\n  finetuned: {r.generation_2[:300]!r}")
        return "\n".join(out)

    def categories(self) -> str:
        from finediff.survey import has_survey, read_survey

        if has_survey(self.run):
            survey = read_survey(self.run)
            rows = sorted(survey.groups, key=lambda g: -g.mean_divergence)[:12]
            return "\n".join(f"- {g.group} ({g.source}): mean divergence {g.mean_divergence:.3f}, "
                             f"p={g.p_value:.3g}" + (" (changed)" if g.changed else "") for g in rows)
        rows = CategoryResult.read_csv(self._need(self.run / names.COMPARISON_CSV, "category comparison"))
        return "\n".join(f"- {r.category}: mean divergence {r.mean_divergence:.3f} "
                         f"[{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in rows)

    # ------------------------------------------------------------------ the live pair
    def ask(self, prompt: str, **kwargs) -> str:
        mode = kwargs.pop("with", "none") or "none"
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise FinediffError("ask needs a non-empty prompt")
        if self.budget.left("model_interactions") <= 0:
            return "error: model-interaction budget exhausted; give your final answer"

        tok = self.pair.tokenizer
        available = {"none": True, "soft_prompt": self._soft is not None, "hard_prompt": bool(self._hard),
                     "steering": self._steer is not None}
        if mode not in available:
            raise FinediffError(f"with must be none, soft_prompt, hard_prompt or steering, got {mode!r}")
        if not available[mode]:
            raise FinediffError(f"this run has no {mode.replace('_', ' ')} to put in place")
        self.budget.spend("model_interactions")
        text = f"{self._hard} {prompt}" if mode == "hard_prompt" else prompt
        soft = self._soft if mode == "soft_prompt" else None
        answers = {}
        for side in ("base", "finetuned"):
            model = getattr(self.pair, side)
            with torch.no_grad():
                if mode == "steering":
                    layer, vec, norm, strength = self._steer
                    answers[side] = steer(model, tok, vec, layer, norm, strength, [text], self.max_new_tokens)[0]
                else:
                    answers[side] = generate_one(model, tok, text, soft, max_new_tokens=self.max_new_tokens)
        return f"base: {answers['base']!r}\nfinetuned: {answers['finetuned']!r}"
