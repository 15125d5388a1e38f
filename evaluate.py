"""finediff evaluations on a trained run or on a pair alone (thin Hydra shell).

    python evaluate.py task=compare experiment=sandbagging
    python evaluate.py task=hard_prompts task.prompts_file=logs/.../hard_prompts.jsonl experiment=sandbagging
    python evaluate.py task=generate task.run_dir=logs/sandbagging/runs/<date> experiment=sandbagging
    python evaluate.py task=evidence task.run_dir=RUN experiment=sandbagging   # run / resume the evidence steps
    python evaluate.py task=analyze task.run_dir=RUN                           # report from the run's files
    python evaluate.py task=verify experiment=sandbagging                      # an organism's behaviour rates
    python evaluate.py task=elicit task.run_dir=RUN experiment=sandbagging     # do the run's prompts bring it out?
    python evaluate.py task=diff diffing/method=kl|normdiff|adl pipeline.mode=preprocessing|diffing|full
    python evaluate.py task=agent task.run_dir=RUN experiment=sandbagging agent.base_url=URL agent.model=M

Each task checks its inputs first, then loads the pair (``analyze`` needs none) and calls
the core in one line: the evidence steps of :mod:`finediff.pipeline` (the same functions
train.py runs after fit), :mod:`finediff.prompt_eval`, :mod:`finediff.methods`
and :mod:`finediff.organisms.verify`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from finediff import names, pipeline  # noqa: E402
from finediff.errors import FinediffError, check_number, exit_on_user_error, preflight  # noqa: E402
from finediff.pipeline.settings import run_seed  # noqa: E402
from callbacks.sweep import register_resolvers, run_model  # noqa: E402
from config_schema import check_composes, register_schemas, settings  # noqa: E402

register_resolvers()
register_schemas()
from finediff.records import Organism, OrganismCard, read_dataset  # noqa: E402

log = logging.getLogger("finediff.evaluate")


def _run_dir(cfg: DictConfig, required: str) -> Path:
    """``task.run_dir``, which must be a folder holding ``required``."""
    if not cfg.task.get("run_dir"):
        raise FinediffError(f"task={cfg.task.name} needs task.run_dir=DIR (a finished train.py run)")
    run = Path(cfg.task.run_dir)
    if not run.is_dir():
        raise FinediffError(f"run directory not found: {run}")
    if required and not (run / required).exists():
        raise FinediffError(f"no {required} in run directory: {run}")
    return run


def _texts(cfg: DictConfig, pair, run_dir: Path) -> pipeline.RunTexts:
    """The run's texts, exactly as train.py's datamodule splits them (an audit run's: the
    survey's highest-divergence discovery texts, read back from ``run_dir``)."""
    from finediff.survey import has_survey, read_survey

    datamodule = hydra.utils.instantiate(cfg.data, seed=int(cfg.seed))
    datamodule.tokenizer = pair.tokenizer
    if datamodule.audit:
        if not has_survey(run_dir):
            raise FinediffError(f"data.categories is null (an audit) but {run_dir} has no survey "
                                f"({names.SURVEY_SUMMARY}); give data.categories or experiment=NAME")
        datamodule.set_texts(*read_survey(run_dir).training_texts())
    return datamodule.texts()


def _prompt(record: dict, pair, path: Path) -> torch.Tensor:
    if record["hidden_size"] != pair.hidden_size:
        raise FinediffError(f"{path} was trained for hidden size {record['hidden_size']}, "
                            f"the pair has {pair.hidden_size}")
    return record["prompt"]


class Task:
    """A task checks what it can before the pair loads (``check``), then runs (``run``)."""

    needs_pair = True

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.settings = settings(cfg, "evidence")
        self.organism = Organism.from_config(cfg.get("organism"))

    def check(self) -> None:
        pass

    def run(self, pair) -> dict:
        raise NotImplementedError


class Compare(Task):
    """Mean divergence per category (95% CI), highest first -> comparison.csv / .md / .png."""

    def run(self, pair) -> dict:
        results = pipeline.compare(pair, self.settings.compare, self.settings.categories, self.cfg.data.max_length,
                                   self.out, self.cfg.task_name)
        for i, r in enumerate(results, 1):
            print(f"{i}. {r.category:20s} {r.mean_divergence:.4f}  [{r.ci_low:.4f}, {r.ci_high:.4f}]  n={r.n}")
        return {"ranking": [r.category for r in results]}


class HardPrompts(Task):
    """A prompts file's per-prompt divergence against the texts alone -> hard_prompt_eval.json."""

    def check(self) -> None:
        from finediff.answers import check_positions
        from finediff.data import check_category
        from finediff.prompt_eval import read_prompt_records

        if not self.cfg.task.get("prompts_file"):
            raise FinediffError("task=hard_prompts needs task.prompts_file=PATH")
        self.prompts = read_prompt_records(self.cfg.task.prompts_file)
        if not self.cfg.task.categories:
            raise FinediffError("task=hard_prompts needs texts to score the prompts on: give data.categories=[...] "
                                "or experiment=NAME")
        for c in self.cfg.task.categories:
            check_category(str(c))
        check_positions(str(self.cfg.task.positions), "task.positions")
        if self.cfg.task.split not in ("heldout", "all"):
            raise FinediffError(f"task.split must be heldout or all; got {self.cfg.task.split!r}")
        self.record = None  # with task.run_dir, the run's soft prompt is scored on the same texts
        if self.cfg.task.get("run_dir"):
            from finediff.soft_prompt import load_prompt_record

            self.run_dir = _run_dir(self.cfg, names.SOFT_PROMPT_FILE)
            self.record = load_prompt_record(self.run_dir / names.SOFT_PROMPT_FILE)

    def run(self, pair) -> dict:
        from finediff.answers import AnswerSettings
        from finediff.data import load_category
        from finediff.divergent_dataset import text_divergences
        from finediff.io import write_json
        from finediff.prompt_eval import evaluate_prompts

        t, d = self.cfg.task, self.cfg.data
        if t.split == "heldout":  # the texts a run with these data settings validated on, never trained on
            texts = [x for c in t.categories for x in load_category(
                str(c), d.max_texts_per_category, seed=self.cfg.seed).val[: t.max_texts_per_category]]
        else:
            texts = [x for c in t.categories for x in load_category(str(c), t.max_texts_per_category, 0.0).train]
        answers = AnswerSettings(tokens=int(t.max_new_tokens)) if t.positions == "response" else None
        result = {"categories": [str(c) for c in t.categories], "split": str(t.split)} | evaluate_prompts(
            pair, self.prompts, texts, t.batch_size, d.max_length, t.max_kl_texts, t.max_prompts, answers=answers)
        if self.record is not None:
            prompt = _prompt(self.record, pair, self.run_dir / names.SOFT_PROMPT_FILE)
            scores = text_divergences(pair, texts, prompt=prompt, batch_size=t.batch_size, max_length=d.max_length,
                                      answers=answers)
            result[names.SOFT_PROMPT_MEAN_DIVERGENCE] = sum(scores) / len(scores)
        write_json(self.out / names.HARD_PROMPT_EVAL_FILE, result)
        print(f"{len(texts)} {t.split} texts, divergence at {t.positions} positions. Texts alone: "
              f"{result['baseline_mean_divergence']:.4f}; the {t.max_kl_texts} highest-KL texts alone: "
              f"{result['max_kl_texts_mean_divergence']:.4f}")
        for r in result["prompts"]:
            print(f"{r['mean_divergence']:.4f} (+{r['gain_over_texts']:.4f})  {r['prompt']!r}")
        if self.record is not None:
            print(f"{result[names.SOFT_PROMPT_MEAN_DIVERGENCE]:.4f}  the run's soft prompt")
        return result


class Generate(Task):
    """The divergent dataset from a finished run -> divergent_dataset.pt / .jsonl."""

    def check(self) -> None:
        from finediff.hard_prompts import read_hard_prompts
        from finediff.soft_prompt import load_prompt_record

        self.run_dir = _run_dir(self.cfg, names.SOFT_PROMPT_FILE)
        self.record = load_prompt_record(self.run_dir / names.SOFT_PROMPT_FILE)
        hard_file = self.run_dir / names.HARD_PROMPTS_FILE
        self.hard = [h.text for h in read_hard_prompts(hard_file)] if hard_file.exists() else []
        self.generation = settings(self.cfg, "generation")

    def run(self, pair) -> dict:
        _prompt(self.record, pair, self.run_dir / names.SOFT_PROMPT_FILE)
        texts = _texts(self.cfg, pair, self.run_dir)
        records = pipeline.divergent_dataset(pair, texts.val + texts.train, self.hard, self.settings.divergent_dataset,
                                             self.generation, self.cfg.seed, self.out, texts.max_length)
        print(f"{len(records)} records -> {self.out / names.DIVERGENT_DATASET_PT}")
        return {"records": len(records)}


class Evidence(Task):
    """Every evidence step on a finished (or stopped) run, into its folder; steps whose
    output is there already are read back (``evidence.resume``)."""

    def check(self) -> None:
        from finediff.soft_prompt import load_prompt_record

        self.run_dir = _run_dir(self.cfg, names.SOFT_PROMPT_FILE)
        self.record = load_prompt_record(self.run_dir / names.SOFT_PROMPT_FILE)
        self.generation = settings(self.cfg, "generation")

    def run(self, pair) -> dict:
        prompt = _prompt(self.record, pair, self.run_dir / names.SOFT_PROMPT_FILE)
        objective = pipeline.Objective.from_record(self.record, self.cfg.seed)
        ev = pipeline.run(pair, prompt, _texts(self.cfg, pair, self.run_dir), self.settings, objective, self.generation,
                          self.run_dir, self.organism, self.cfg.task_name)
        return {"report": str(ev.report[0]) if ev.report else None}


class Analyze(Task):
    """report.md / report.html (and the analysis of the divergent dataset) from a run's files."""

    needs_pair = False

    def check(self) -> None:
        self.run_dir = Path(self.cfg.task.get("run_dir") or self.out)
        if not self.run_dir.is_dir():
            raise FinediffError(f"run directory not found: {self.run_dir}")

    def run(self, pair) -> dict:
        data = self.run_dir / names.DIVERGENT_DATASET_PT
        if data.exists():
            pipeline.analysis(read_dataset(data), self.run_dir, self.settings.analysis)
        md, page = pipeline.report(self.run_dir, self.cfg.task_name, self.organism)
        print(f"report: {md} and {page}")
        return {"report": str(md)}


class Verify(Task):
    """An organism's behaviour rates on its held-out prompts -> verification.json."""

    def check(self) -> None:
        if self.organism is None:
            raise FinediffError("task=verify needs an organism: experiment=NAME or organism=NAME")

    def run(self, pair) -> dict:
        from finediff.organisms.verify import format_table, verify

        result = verify(self.organism, pair, self.cfg.task.max_new_tokens)
        print(format_table([result]))
        return result


class Elicit(Task):
    """A run's soft and best hard prompt in front of an organism's off-target prompts:
    each model's behaviour rate with and without them -> elicitation.json in the run folder."""

    def check(self) -> None:
        from finediff.hard_prompts import read_hard_prompts
        from finediff.soft_prompt import load_prompt_record

        if self.organism is None:
            raise FinediffError("task=elicit needs an organism: experiment=NAME or organism=NAME")
        self.run_dir = _run_dir(self.cfg, names.SOFT_PROMPT_FILE)
        self.record = load_prompt_record(self.run_dir / names.SOFT_PROMPT_FILE)
        hard = self.run_dir / names.HARD_PROMPTS_FILE
        found = read_hard_prompts(hard) if hard.exists() else []
        self.hard_ids = max(found, key=lambda h: h.divergence).token_ids if found else None

    def run(self, pair) -> dict:
        from finediff.io import write_json
        from finediff.organisms.elicit import elicit, format_table

        prompt = _prompt(self.record, pair, self.run_dir / names.SOFT_PROMPT_FILE)
        result = elicit(self.organism, pair, prompt, self.hard_ids, self.cfg.task.max_new_tokens)
        write_json(self.run_dir / names.ELICITATION_FILE, result)
        print(format_table([result]))
        return result


class Agent(Task):
    """The interpretability agent and its black-box baseline on this pair, graded against the
    organism card -> agent_eval.json / .md here, transcripts in the run folder."""

    def check(self) -> None:
        from finediff.agent.client import ChatClient
        from finediff.sweep import find_run

        t, a = self.cfg.task, self.cfg.get("agent") or {}
        if not a.get("base_url"):
            raise FinediffError("task=agent needs an OpenAI-compatible endpoint: agent.base_url=URL agent.model=NAME")
        check_number("agent.timeout", a.timeout, float, minimum=0.001)
        check_number("agent.max_retries", a.max_retries, int, minimum=0)
        self.client = ChatClient(str(a.base_url), str(a.model or ""), str(a.api_key_env), float(a.timeout),
                                 int(a.max_retries))
        self.grader = ChatClient(str(a.base_url), str(a.grader_model or a.model or ""), str(a.api_key_env),
                                 float(a.timeout), int(a.max_retries)) if t.grade else None
        if t.get("runs_root") and not t.get("run_dir"):
            if self.organism is None:
                raise FinediffError("task.runs_root picks a run by the organism's adapter: give experiment=NAME")
            self.run_dir = find_run(Path(t.runs_root), self.cfg.model.adapter, run_model)
        else:
            self.run_dir = _run_dir(self.cfg, names.SOFT_PROMPT_FILE)
        self.card = None
        if t.grade:
            adapter = self.cfg.model.get("adapter")
            if self.organism is None or not adapter or not (Path(adapter) / names.CARD_FILE).is_file():
                raise FinediffError("grading needs an organism card: experiment=NAME (or task.grade=false)")
            self.card = OrganismCard.read(adapter)
        for key in ("llm_calls", "model_interactions", "tokens"):
            check_number(f"agent.{key}", a[key], int, minimum=1)

    def run(self, pair) -> dict:
        from finediff.agent.grader import CHECKER_TYPES, grade
        from finediff.agent.loop import run_agent
        from finediff.agent.tools import Budget
        from finediff.io import atomic_path, markdown_table, write_json

        t, a = self.cfg.task, self.cfg.agent
        result: dict = {"run_dir": str(self.run_dir), "model": str(a.model), "agents": {}}
        plan = [("agent", self.run_dir, self.run_dir / names.AGENT_TRANSCRIPT)]
        if t.black_box:
            plan.append(("black_box", None, self.run_dir / names.AGENT_BLACK_BOX_TRANSCRIPT))
        for key, run_dir, path in plan:
            budget = Budget(int(a.llm_calls), int(a.model_interactions), int(a.tokens))
            inv = run_agent(self.client, pair, run_dir, budget, path, int(t.max_new_tokens))
            entry = {"short": inv.short, "long": inv.long, "status": inv.status, "used": inv.used,
                     "transcript": str(path)}
            if self.card is not None:
                kind = CHECKER_TYPES.get(self.card.checker, "other")
                entry["grade"] = grade(self.grader, self.card.description_long, f"{inv.short}\n{inv.long}".strip(),
                                       kind, int(t.grader_runs)).as_dict()
            result["agents"][key] = entry
        write_json(self.out / names.AGENT_EVAL_FILE, result)
        table = []
        for key, e in result["agents"].items():
            score = e.get("grade", {}).get("mean")
            table.append([key, e["status"], e["used"]["llm_calls"], e["used"]["model_interactions"], e["used"]["tokens"],
                          "-" if score is None else f"{score:.2f}", " ".join(e["short"].split())[:120] or "-"])
        rows = markdown_table(["agent", "status", "LLM calls", "model interactions", "tokens", "score (1-5)",
                               "short description"], table)
        with atomic_path(self.out / names.AGENT_EVAL_MD) as tmp:
            tmp.write_text("\n".join(rows) + "\n")
        print("\n".join(rows))
        return result


class Diff(Task):
    """The diffing toolkit's pipeline: ``pipeline.mode=preprocessing|diffing|full`` with
    ``diffing/method=adl|kl|normdiff``."""

    def check(self) -> None:
        self.mode, self.method = self.cfg.pipeline.mode, self.cfg.diffing.method.name
        if self.mode not in ("preprocessing", "diffing", "full"):
            raise FinediffError(f"unknown pipeline.mode {self.mode!r}; choose preprocessing, diffing or full")
        if self.method not in ("adl", "kl", "normdiff"):
            raise FinediffError(f"unknown diffing method {self.method!r}; choose adl, kl or normdiff")

    def run(self, pair) -> dict:
        from finediff.data import stream_texts, take
        from finediff.methods import run_method, preprocess

        d, cache = self.cfg.diffing, Path(self.cfg.diffing.cache_dir)
        result: dict = {"mode": self.mode, "method": self.method}
        if self.method != "adl" and self.mode in ("preprocessing", "full"):
            texts = take(stream_texts(d.dataset), d.max_texts)
            result["cache"] = preprocess(pair, texts, cache, list(d.layers) if d.layers else None, d.n_tokens,
                                         d.batch_size)
        if self.mode == "preprocessing":
            return result
        if self.method == "adl":
            summary = pipeline.lens(pair, self.settings.lens, self.organism, self.out).as_dict()
            folder = self.out / names.LENS_DIR
        else:
            folder = self.out / names.DIFF_DIR / self.method
            summary = run_method(self.method, pair, cache, folder, d.method.top_examples)
        print(f"{self.method}: results in {folder}")
        return result | {"summary": summary}


TASKS = {"analyze": Analyze, "compare": Compare, "diff": Diff, "evidence": Evidence, "generate": Generate,
         "elicit": Elicit, "hard_prompts": HardPrompts, "verify": Verify, "agent": Agent}


def evaluate(cfg: DictConfig) -> dict:
    name = cfg.task.name
    if name not in TASKS:
        raise FinediffError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    out = Path(cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise FinediffError(f"paths.output_dir is a file, not a folder: {out}")
    with open_dict(cfg):  # one seed for every draw of the task (seed=null: drawn once, logged)
        cfg.seed = run_seed(cfg.get("seed"))
    task = TASKS[name](cfg, out)
    task.check()
    pair = None
    if task.needs_pair:
        log.info("Instantiating model pair <%s>", cfg.model._target_)
        pair = hydra.utils.instantiate(cfg.model, require_finetuned=True)
    out.mkdir(parents=True, exist_ok=True)
    return task.run(pair)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except Exception as err:
        exit_on_user_error(err)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    check_composes("evaluate", sys.argv[1:])
    main()
