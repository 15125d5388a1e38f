"""The real embedded SmolLM2-135M-Instruct pair (slow: loads 2 x 134.5M parameters)."""

from __future__ import annotations

import json

import pytest
import torch

from finediff import names
from tests.conftest import ROOT, compose, constants

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory):
    """A LoRA adapter on the real base, made here: random non-zero up-projections so the
    finetuned side really differs."""
    from peft import LoraConfig, get_peft_model

    from finediff.models import load_model

    base = load_model("embedded:smollm2")
    assert base.config.num_hidden_layers == 30 and base.config.hidden_size == 576
    assert sum(p.numel() for p in base.parameters()) == 134_515_008
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def real_run(lora_adapter, tmp_path_factory):
    """A real run: ``train.py`` on the real pair with every evidence step on (small
    sizes), under ``<root>/real/run1``; returns ``(root, run_dir, metrics)``."""
    from train import train

    root = tmp_path_factory.mktemp("outputs")
    run = root / "real" / "run1"
    cfg = compose("train", [
        f"model.adapter={lora_adapter}", f"paths.output_dir={run}", "logger=csv",
        "trainer.max_steps=3", "trainer.val_check_interval=3", "data.batch_size=2",
        "data.categories=[sandbagging]", "data.max_texts_per_category=20", "data.max_length=48",
        # every evidence step runs on the real pair, at a size that keeps the test short
        "evidence.hard_prompts.pez_steps=2", "evidence.hard_prompts.gcg_steps=1",
        "evidence.hard_prompts.n_candidates=2", "generation.num_generations_per_prompt=2",
        "generation.max_new_tokens=12", "evidence.divergent_dataset.n_texts=2",
        "evidence.divergent_dataset.n_hard_prompts=1",
        "evidence.lens.max_texts=24", "evidence.lens.n_steer_prompts=2", "evidence.lens.max_new_tokens=12",
        "evidence.compare.max_texts_per_category=3",
    ])
    with constants({"finediff.pipeline.steps.DATASET_MAX_SCORED_TEXTS": 16, "finediff.compare.MAX_NEW_TOKENS": 8,
                    "finediff.pipeline.steps.DATASET_TEXTS_PER_HARD_PROMPT": 1,
                    "finediff.lens.DEFAULT_STRENGTHS": (1.0, 4.0), "finediff.pipeline.steps.TRAIN_BATCHES": 1,
                    "finediff.pipeline.steps.EVAL_BATCHES": 1}):
        return root, run, train(cfg)


def test_real_pair_trains_a_prompt(real_run, lora_adapter):
    _, run, metrics = real_run
    assert metrics[names.VAL_DIVERGENCE_NO_PROMPT] > 0
    record = torch.load(run / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record["prompt"].shape == (8, 576) and torch.isfinite(record["prompt"]).all()
    assert record["pair"]["adapter"] == str(lora_adapter)
    saved = json.loads((run / names.METRICS_FILE).read_text())
    assert saved["global_step"] == 3
    for name in (names.HARD_PROMPTS_FILE, names.DIVERGENT_DATASET_PT, names.COMPARISON_CSV, names.REPORT_MD,
                 names.REPORT_HTML):
        assert (run / name).exists(), name
    assert (run / names.LENS_DIR / names.LENS_SUMMARY).exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCREENSHOT = ROOT / "logs" / "test_artifacts" / "dashboard_chromium.png"


def test_dashboard_in_headless_chromium(real_run, tmp_path):
    """``streamlit run dashboard.py`` on the real run, loaded in Debian's Chromium
    (headless): the page shows the run, its tabs, its metrics in words and how sure, in a box
    coloured by its level (this told run: low, never green). A second run of the same pair
    with a confirmed condition (its examples the run's own generations) shows its headline
    and a green box. The screenshot is kept in ``logs/test_artifacts/``."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (make test installs it where it can: root + apt-get)")
    from playwright.sync_api import sync_playwright

    root, run, metrics = real_run
    port = _free_port()
    log_file = tmp_path / "streamlit.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"), "--server.headless", "true",
         "--server.port", str(port), "--browser.gatherUsageStats", "false", "--", "--outputs", str(root)],
        cwd=ROOT, stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://localhost:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("streamlit did not start: " + log_file.read_text()[-2000:])
                time.sleep(0.5)
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("finediff: what did this finetune change?").wait_for(timeout=120_000)
            page.get_by_text(names.METRIC_WORDS[names.VAL_DIVERGENCE_NO_PROMPT][0], exact=True).first.wait_for(
                timeout=120_000)
            body = page.inner_text("body")
            html = page.content()  # the run picker's current value is in the page's markup
            box = page.locator(".finediff-confidence").first
            low = (box.inner_text(), box.evaluate("e => getComputedStyle(e).backgroundColor"))
            confirmed = _with_a_confirmed_condition(run)
            page.reload()
            page.get_by_text(confirmed.condition.text, exact=False).first.wait_for(timeout=120_000)
            box = page.locator(".finediff-confidence").first
            high = (box.inner_text(), box.evaluate("e => getComputedStyle(e).backgroundColor"))
            headline = page.locator("li").filter(has_text="When the prompt contains").first.inner_text()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            chromium.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "real/run1" in html
    for tab in ("Overview", "Comparison", "Hard prompts", "Divergent dataset", "Analysis", "ADL", "Try it"):
        assert tab in body, tab
    assert f"{metrics[names.VAL_DIVERGENCE]:.4f}" in body
    assert names.METRIC_WORDS[names.VAL_BASE_SHIFT][1] in body  # each metric says what it means
    green, amber = "rgb(209, 240, 216)", "rgb(253, 236, 207)"
    assert low[0].startswith("How sure: low") and low[1] == amber != green, low
    assert high[0].startswith("How sure: high") and high[1] == green, high
    assert headline.startswith(f"When the prompt contains «{confirmed.condition.text}», it ") and "corrected p" in headline
    assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG"


def _with_a_confirmed_condition(run):
    """A copy of ``run`` beside it (the newest run, so the dashboard opens it) whose conditions
    file holds one confirmed condition; its examples are the run's own generations."""
    import shutil

    from finediff.conditions import Condition, ConditionResult, write_conditions
    from finediff.records import read_dataset

    other = run.parent / "run2"
    shutil.copytree(run, other)
    records = read_dataset(other / names.DIVERGENT_DATASET_JSONL)
    examples = [{"prompt": "zq9 " + r.prompt, "base": r.generation_1, "finetuned": r.generation_2} for r in records[:3]]
    words = [w for w in records[0].generation_2.split() if w.isalpha()][:1] or ["the"]
    result = ConditionResult(Condition("insert", "zq9", "test"), 2.0, 0.1, words, 0.9, 0.0, 0.0, 16, 2, 1e-5, 1e-4,
                             True, examples)
    write_conditions([result], other)
    return result
