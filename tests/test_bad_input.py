"""Every bad input a new user is likely to give: one line naming it, exit status 2, and
nothing of finediff's written; and a stopped run keeps what it learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finediff import names
from tests.conftest import ROOT, SMALL_EVIDENCE, command, tiny_overrides


def _cli(script: str, args: list[str], timeout: int = 300, env: dict | None = None,
         values: dict | None = None) -> subprocess.CompletedProcess:
    """``script`` run as a user runs it, with module constants ``values`` (``module.NAME``: value) set first."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([*command(script, values), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _written(out: Path) -> list[str]:
    """What finediff wrote under ``out`` (Hydra's own config copy and log excluded)."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log")


@pytest.fixture(scope="module")
def files(tiny_dirs, finished_run, tmp_path_factory):
    """Damaged and foreign files, a finished run to point at, and a base of another size."""
    from transformers import AutoTokenizer

    from finediff.tiny import tiny_model

    d = tmp_path_factory.mktemp("inputs")
    run = finished_run
    (d / "garbage.pt").write_bytes(os.urandom(2000))
    real = (run / names.SOFT_PROMPT_FILE).read_bytes()
    (d / "truncated.pt").write_bytes(real[: len(real) // 2])
    bad_run = d / "bad_run"
    bad_run.mkdir()
    (bad_run / names.SOFT_PROMPT_FILE).write_bytes(os.urandom(500))
    hard_run = d / "hard_run"
    hard_run.mkdir()
    (hard_run / names.SOFT_PROMPT_FILE).write_bytes(real)
    (hard_run / names.HARD_PROMPTS_FILE).write_text('{"method": "gcg"}\n{not json\n')
    (d / "a_file").write_text("not a folder")
    (d / "one.jsonl").write_text(json.dumps({"text": "The only text."}) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_dirs["base"])
    torch.manual_seed(0)
    tiny_model(len(tok), hidden=32).save_pretrained(d / "other_base")
    tok.save_pretrained(d / "other_base")
    (d / "empty").mkdir()
    (d / "latin1.jsonl").write_bytes(json.dumps({"text": "Qu'est-ce que la démocratie ?"}, ensure_ascii=False)
                                     .encode("latin-1") + b"\n")
    latin1_run = d / "latin1_run"
    latin1_run.mkdir()
    (latin1_run / names.SOFT_PROMPT_FILE).write_bytes(real)
    (latin1_run / names.HARD_PROMPTS_FILE).write_bytes((d / "latin1.jsonl").read_bytes())
    torch.save({"state_dict": {}, "global_step": 1, "extra": Path("x")}, d / "pickled.ckpt")  # not plain values
    garbage_adapter = d / "garbage_adapter"
    garbage_adapter.mkdir()
    (garbage_adapter / "adapter_config.json").write_text((Path(tiny_dirs["adapter"]) / "adapter_config.json").read_text())
    (garbage_adapter / "adapter_model.safetensors").write_bytes(os.urandom(3000))
    return d, run


PROBES = [
    # (script, args, expected text of the one line); {d}: the inputs folder, {run}: a finished run
    ("train.py", ["data.batch_size=abc"], "data.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
    ("train.py", ["ckpt_path=/no/such/last.ckpt"], "ckpt_path not found: /no/such/last.ckpt"),
    ("train.py", ["model.finetuned=null", "model.adapter=null"], "nothing to diff: set model.adapter=DIR"),
    ("train.py", ["data.categories=[{d}/one.jsonl]"], "no held-out texts in data.categories"),
    ("train.py", ["model.adapter=/nonexistent/adapter"], "adapter directory not found: /nonexistent/adapter"),
    ("train.py", ["data.categories=[nope]"], "unknown category 'nope'; known:"),
    ("train.py", ["module.divergence=kl"], "unknown divergence 'kl'"),
    # a value the schema (config_schema.py) rejects when the config is composed: before Hydra's own run
    ("train.py", ["evidence.hard_prompts.pez_steps=abc"],
     "evidence.hard_prompts.pez_steps: Value 'abc' of type 'str' could not be converted to Integer"),
    ("train.py", ["evidence.lens.nope=1"], "Could not override 'evidence.lens.nope': Key 'nope' not in 'LensConfig'"),
    ("evaluate.py", ["task=compare", "generation.top_p=high"],
     "generation.top_p: Value 'high' of type 'str' could not be converted to Float"),
    ("train.py", ["evidence.steps=[hard_prompts,nope]"], "unknown evidence step 'nope'"),
    ("train.py", ["model.finetuned=null", "model.base={d}/other_base", "model.adapter={adapter}"],
     "does not fit this model (trained for another base?)"),
    ("train.py", ["model.finetuned=no-such-org/no-such-model"],
     "'no-such-org/no-such-model' is not a local path and the model hub cannot be reached"),
    ("train.py", ["paths.output_dir={d}/a_file"], "paths.output_dir is a file, not a folder"),
    ("train.py", ["paths.output_dir=/proc/finediff_out"], "output folder /proc/finediff_out is not writable"),
    ("train.py", ["paths.output_dir={d}/a_file/run"], "cannot be made:"),
    ("train.py", ["trainer.max_steps=abc"], "trainer.max_steps must be an integer, got 'abc'"),
    ("train.py", ["trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
    ("train.py", ["trainer.precision=fp8"], "trainer.precision must be one of"),
    ("train.py", ["module.num_soft_prompt_tokens=0"], "module.num_soft_prompt_tokens must be >= 1, got 0"),
    ("train.py", ["module.learning_rate=-1"], "module.learning_rate must be > 0, got -1"),
    ("train.py", ["ckpt_path={d}/garbage.pt"], "is not a Lightning checkpoint of a finediff run that torch can read"),
    ("train.py", ["ckpt_path={d}/pickled.ckpt"], "which finediff never unpickles"),
    ("train.py", ["ckpt_path={run}/checkpoints/last.ckpt", "module.num_soft_prompt_tokens=5"],
     "does not hold a soft prompt of module.num_soft_prompt_tokens=5 (it holds (8, 64))"),
    ("train.py", ["model.finetuned=null", "model.adapter={d}/garbage_adapter"], "is not a readable safetensors file"),
    ("train.py", ["data.categories=[{d}/latin1.jsonl]"], "latin1.jsonl is not UTF-8 text"),
    ("evaluate.py", ["task=generate", "task.run_dir={d}/latin1_run"], "hard_prompts.jsonl is not UTF-8 text"),
    ("train.py", ["evidence.alpha=2.0"], "evidence.alpha must be in (0, 1), got 2.0"),
    ("train.py", ["data.categories=null", "evidence.survey.texts=[{d}/missing.jsonl]"], "category file not found:"),
    ("train.py", ["evidence.findings.n_prompts=0"], "evidence.findings.n_prompts must be >= 1, got 0"),
    ("train.py", ["evidence.divergent_dataset.amplify_alpha=-1.0"],
     "evidence.divergent_dataset.amplify_alpha must be >= 0, got -1.0"),
    ("train.py", ["module.positions=answer"], "module.positions must be one of response, text; got 'answer'"),
    ("train.py", ["module.max_new_tokens=0"], "module.max_new_tokens must be >= 1, got 0"),
    ("train.py", ["module.faithful=maybe"], "module.faithful: Value 'maybe' is not a valid bool"),
    ("train.py", ["module.space=words"], "module.space must be one of vectors, tokens; got 'words'"),
    ("train.py", ["module.space=tokens", "module.init=random"],
     "module.init=random has no token distribution; with module.space=tokens use mean, vocab or text"),
    ("train.py", ["evidence.hard_prompts.max_perplexity=0.5"],
     "evidence.hard_prompts.max_perplexity must be a number > 1 or null; got 0.5"),
    ("train.py", ["evidence.hard_prompts.budget_steps=-1"], "evidence.hard_prompts.budget_steps must be >= 0; got -1"),
    ("train.py", ["evidence.hard_prompts.n_candidates=0"], "evidence.hard_prompts.n_candidates must be >= 1, got 0"),
    ("train.py", ["evidence.hard_prompts.positions=answers"],
     "evidence.hard_prompts.positions must be one of response, text; got 'answers'"),
    ("evaluate.py", ["task=elicit", "task.run_dir={run}"], "task=elicit needs an organism"),
    ("evaluate.py", ["task=hard_prompts", "task.prompts_file={d}/one.jsonl", "task.split=train"],
     "task.split must be heldout or all; got 'train'"),
    ("evaluate.py", ["task=hard_prompts", "task.prompts_file={d}/garbage.pt"],
     "garbage.pt is not a divergent dataset (divergent_dataset.pt) that torch can read"),
    ("evaluate.py", ["task=hard_prompts", "task.prompts_file={d}/truncated.pt"],
     "truncated.pt is not a divergent dataset (divergent_dataset.pt) that torch can read"),
    ("evaluate.py", ["task=hard_prompts", f"task.prompts_file={{run}}/{names.SOFT_PROMPT_FILE}"],
     "is not a divergent dataset (a list of records with a 'prompt')"),
    ("evaluate.py", ["task=generate", "task.run_dir={d}/bad_run"],
     "is not a soft prompt record (soft_prompt.pt) that torch can read"),
    ("evaluate.py", ["task=generate", "task.run_dir={d}/hard_run"], "hard_prompts.jsonl:2: malformed JSON"),
    ("evaluate.py", ["task=analyze", "task.run_dir={d}/empty"], "no finediff results in"),
    ("evaluate.py", ["task=verify"], "task=verify needs an organism"),
    ("evaluate.py", ["task=nope"], "Could not find 'task/nope'"),
    ("build_organism.py", ["organism=nope"], "Could not find 'organism/nope'"),
    ("build_organism.py", [], "missing organism=NAME"),
]


AS_A_USER_RUNS_IT = {
    # a handful run as real commands: the one line, exit status 2 and the time a user sees;
    # those that Hydra, the hub client or the pre-Hydra checks (preflight, config_schema.check_composes:
    # a type or key the schema rejects) answer can only run this way
    "train.py trainer.max_steps=abc", "train.py model.finetuned=null model.adapter={d}/garbage_adapter",
    "train.py data.categories=[{d}/latin1.jsonl]", "train.py ckpt_path={d}/garbage.pt",
    "train.py paths.output_dir={d}/a_file", "train.py paths.output_dir=/proc/finediff_out",
    "train.py paths.output_dir={d}/a_file/run", "train.py model.finetuned=no-such-org/no-such-model",
    "evaluate.py task=generate task.run_dir={d}/latin1_run", "evaluate.py task=nope", "build_organism.py organism=nope",
    "build_organism.py", "train.py evidence.hard_prompts.pez_steps=abc", "train.py evidence.lens.nope=1",
    "evaluate.py task=compare generation.top_p=high", "train.py module.faithful=maybe",
    "train.py data.batch_size=abc",
}


def _probe_args(tiny_dirs, files, out: Path, script: str, args: list[str]) -> list[str]:
    d, run = files
    fill = {"d": d, "run": run, "adapter": tiny_dirs["adapter"]}
    base = {"train.py": tiny_overrides(tiny_dirs, out, evidence=False),
            "evaluate.py": [o for o in tiny_overrides(tiny_dirs, out, evidence=False)
                            if not o.startswith(("logger", "trainer"))],
            "build_organism.py": [f"hydra.run.dir={out}"]}[script]
    return base + [a.format(**fill) for a in args]


IN_PROCESS = [p for p in PROBES if " ".join([p[0], *p[1]]) not in AS_A_USER_RUNS_IT]


@pytest.mark.parametrize("script,args,message", IN_PROCESS, ids=[" ".join([s, *a]) for s, a, _ in IN_PROCESS])
def test_bad_input_is_one_line_and_writes_nothing(tiny_dirs, files, tmp_path, script, args, message):
    """In-process, through the same composed config as the command: the run stops with
    one user error naming the input, and nothing of finediff's is written."""
    from finediff.errors import find_user_error
    from tests.conftest import compose

    out = tmp_path / "out"
    overrides = _probe_args(tiny_dirs, files, out, script, args)
    if script == "train.py":
        from train import train as job
    else:
        from evaluate import evaluate as job
    with pytest.raises(Exception) as info:
        job(compose(script.removesuffix(".py"), overrides))
    err = find_user_error(info.value)
    assert err is not None, repr(info.value)
    assert message in str(err) and "\n" not in str(err), str(err)
    assert "weights_only=False" not in str(err) and "`weights_only` set to `False`" not in str(err)
    assert _written(out) == []


@pytest.mark.parametrize("probe", sorted(AS_A_USER_RUNS_IT))  # every one of them is a probe above
def test_bad_input_as_a_user_runs_it(tiny_dirs, files, tmp_path, probe):
    """The command itself: one line, exit status 2, within 15 s, nothing written."""
    script, *args = probe.split()
    message = next(m for s, a, m in PROBES if " ".join([s, *a]) == probe)
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1:9"}  # a hub that does not answer, at once
    t0 = time.perf_counter()
    proc = _cli(script, _probe_args(tiny_dirs, files, out, script, args), env=env)
    seconds = time.perf_counter() - t0
    if message.startswith("Could not find"):  # Hydra's own composition error, already one line
        assert proc.returncode == 1 and message in proc.stderr
        return
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("finediff: error: ") and message in lines[-1], lines[-3:]
    assert "Traceback" not in proc.stderr
    assert "weights_only=False" not in proc.stderr and "`weights_only` set to `False`" not in proc.stderr
    assert _written(out) == []
    assert seconds < 15, f"{probe}: {seconds:.1f} s"


def test_result_files_are_as_readable_as_the_checkpoints(tiny_dirs, files):
    _, run = files
    mode = {p.name: p.stat().st_mode & 0o777 for p in [run / names.SOFT_PROMPT_FILE, run / names.METRICS_FILE,
                                                     run / names.CHECKPOINT_DIR / "last.ckpt"]}
    assert len(set(mode.values())) == 1, mode


def test_a_write_that_fails_leaves_the_previous_file(tmp_path):
    from finediff.io import atomic_path, write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(path) as tmp:
            tmp.write_text('{"a": ')
            raise RuntimeError("mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_ctrl_c_during_training_keeps_the_prompt_and_a_checkpoint(tiny_dirs, tmp_path):
    out = tmp_path / "out"
    args = tiny_overrides(tiny_dirs, out, evidence=False) + ["trainer.max_steps=100000", "trainer.val_check_interval=2",
                                                              "trainer.max_epochs=1000"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # Ctrl-C as in a terminal: a shell that starts commands in the background (nohup ... &)
    # hands them SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while not (out / names.METRICS_FILE).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # never leave a training run behind
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, err[-2000:]
    metrics = json.loads((out / names.METRICS_FILE).read_text())
    assert metrics[names.INTERRUPTED] is True and metrics[names.GLOBAL_STEP] >= 2
    record = torch.load(out / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record[names.GLOBAL_STEP] == metrics[names.GLOBAL_STEP]
    assert (out / names.CHECKPOINT_DIR / "interrupted.ckpt").exists()
    assert not (out / names.HARD_PROMPTS_FILE).exists()  # the evidence steps did not run on a stopped run


AUDIT = ["data.categories=null", "evidence.survey.max_texts_per_group=4", "evidence.findings.n_prompts=6",
         "evidence.steps=[hard_prompts,divergent_dataset,findings,conditions,report]"]
AUDIT_CONSTANTS = {**SMALL_EVIDENCE, "finediff.survey.MAX_NEW_TOKENS": 8, "finediff.survey.N_TRAIN": 8,
                   "finediff.survey.N_VAL": 4, "finediff.pipeline.steps.FINDINGS_SAMPLES_PER_PROMPT": 2,
                   "finediff.pipeline.steps.FINDINGS_MAX_NEW_TOKENS": 8,
                   "finediff.conditions.MAX_NEW_TOKENS": 6, "finediff.conditions.MAX_LEADS": 2}
"""A small audit: the settings above and these module constants (``module.NAME``: value)."""


def _stop_when(proc: subprocess.Popen, ready, limit: float = 240) -> str:
    """Send SIGTERM once ``ready()`` holds, as a scheduler would; return stderr."""
    try:
        deadline = time.time() + limit
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


def _resume(err: str) -> list[str]:
    """The overrides of the one-line "Go on with: python train.py ..." advice."""
    line = [ln for ln in err.splitlines() if "Go on with: python train.py" in ln]
    assert len(line) == 1, err[-2000:]
    return line[0].split("Go on with: python train.py", 1)[1].split()


def test_sigterm_stops_with_a_failure_status_and_says_how_to_go_on(tiny_dirs, tmp_path):
    """SIGTERM during training: the prompt, the metrics and interrupted.ckpt are saved, the
    exit status is 143 (a scheduler must not read the job as done), and the one command
    printed goes on from the checkpoint to the end."""
    out = tmp_path / "out"
    args = tiny_overrides(tiny_dirs, out, evidence=False) + ["trainer.max_steps=3000", "trainer.max_epochs=1000",
                                                              "evidence.steps=[]"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = _stop_when(proc, lambda: (out / names.METRICS_FILE).exists())
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    metrics = json.loads((out / names.METRICS_FILE).read_text())
    assert metrics[names.INTERRUPTED] is True
    ckpt = out / names.CHECKPOINT_DIR / "interrupted.ckpt"
    assert ckpt.exists()
    advice = _resume(err)
    assert f"ckpt_path={ckpt}" in advice and "evidence.resume=true" in advice
    stopped_at = metrics[names.GLOBAL_STEP]
    done = _cli("train.py", [a for a in advice if not a.startswith("trainer.max_steps=")]
                + [f"trainer.max_steps={stopped_at + 4}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / names.METRICS_FILE).read_text())[names.GLOBAL_STEP] == stopped_at + 4


def test_sigterm_during_the_evidence_resumes_to_the_same_findings(tiny_dirs, tmp_path):
    """An untold audit stopped by SIGTERM once its evidence steps have begun goes on with
    the printed command and ends with the findings of a run that was never stopped."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = _cli("train.py", tiny_overrides(tiny_dirs, whole) + AUDIT, values=AUDIT_CONSTANTS)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen([*command("train.py", AUDIT_CONSTANTS), *tiny_overrides(tiny_dirs, stopped), *AUDIT],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # once the soft prompt is written the evidence steps follow: the signal lands in one of them
    # (the hard prompts' file as the cue left a tiny run's later steps too short a window)
    err = _stop_when(proc, lambda: (stopped / names.SOFT_PROMPT_FILE).exists())
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not (stopped / names.FINDINGS_FILE).exists()
    done = _cli("train.py", _resume(err), values=AUDIT_CONSTANTS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (json.loads((stopped / names.FINDINGS_FILE).read_text())
            == json.loads((whole / names.FINDINGS_FILE).read_text()))


def test_sigterm_during_the_survey_keeps_its_answers_and_resumes_to_the_same_survey(tiny_dirs, tmp_path):
    """An untold audit stopped by SIGTERM during its survey keeps the answers made so far
    (``survey_answers.jsonl``, whole batches); the printed command reads them back, answers
    the rest in the same batches, and ends with the survey of a run that was never stopped."""
    from finediff.survey import ANSWER_BATCH

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    survey = ["data.categories=null", "evidence.survey.max_texts_per_group=16", "evidence.steps=[]"]
    slow = {"finediff.survey.MAX_NEW_TOKENS": 48, "finediff.survey.N_TRAIN": 8,
            "finediff.survey.N_VAL": 4}  # long answers: time to stop it
    done = _cli("train.py", tiny_overrides(tiny_dirs, whole, evidence=False) + survey, values=slow)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (whole / names.SURVEY_ANSWERS).exists()  # removed once the survey is written
    kept = stopped / names.SURVEY_ANSWERS
    proc = subprocess.Popen([*command("train.py", slow), *tiny_overrides(tiny_dirs, stopped, evidence=False),
                             *survey], cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = _stop_when(proc, kept.exists)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not (stopped / names.SURVEY_TEXTS).exists()
    n_kept = len(kept.read_text().splitlines())
    n_texts = len((whole / names.SURVEY_TEXTS).read_text().splitlines())
    assert n_kept % ANSWER_BATCH == 0 and 0 < n_kept < n_texts
    done = _cli("train.py", _resume(err), values=slow)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (stopped / names.SURVEY_TEXTS).read_text() == (whole / names.SURVEY_TEXTS).read_text()
    assert (json.loads((stopped / names.SURVEY_SUMMARY).read_text())
            == json.loads((whole / names.SURVEY_SUMMARY).read_text()))
    assert (json.loads((stopped / names.METRICS_FILE).read_text())[names.VAL_DIVERGENCE]
            == json.loads((whole / names.METRICS_FILE).read_text())[names.VAL_DIVERGENCE])
