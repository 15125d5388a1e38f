"""The Streamlit dashboard, driven by Streamlit's AppTest on a real tiny run."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run_train


@pytest.fixture(scope="module")
def run_root(finished_run, tmp_path_factory):
    """A copy of the shared finished run under its own outputs root (these tests change it)."""
    import shutil

    root = tmp_path_factory.mktemp("outputs")
    shutil.copytree(finished_run, root / "sandbagging" / "run1")
    return root


def test_dashboard_discovers_and_shows_a_run(run_root, tiny_dirs, monkeypatch):
    import torch
    from streamlit.testing.v1 import AppTest

    from finediff import names
    from finediff.io import torch_save

    # The tiny pair answers every prompt alike; point the run at a pair of random models
    # with large weights, whose greedy answers depend on the prompt, and give it a prompt
    from transformers import AutoTokenizer, LlamaForCausalLM

    from finediff.tiny import tiny_model

    run = run_root / "sandbagging" / "run1"
    tok = AutoTokenizer.from_pretrained(tiny_dirs["base"])
    record = torch.load(run / names.SOFT_PROMPT_FILE, weights_only=True)
    for seed, side in enumerate(("base", "finetuned")):
        config = tiny_model(len(tok)).config
        config.initializer_range = 1.0
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(run_root / side)
        tok.save_pretrained(run_root / side)
        record["pair"][side] = str(run_root / side)
    record["pair"]["adapter"] = None
    record["prompt"] = torch.randn_like(record["prompt"])
    torch_save(run / names.SOFT_PROMPT_FILE, record)
    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(run_root))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value == "sandbagging/run1"
    labels = [t.label for t in at.tabs]
    for label in ("Overview", "Comparison", "Hard prompts", "Divergent dataset", "Analysis", "Clusters", "ADL",
                  "Try it"):
        assert label in labels
    assert [m.label for m in at.metric] == [names.METRIC_WORDS[k][0] for k in names.VAL_METRIC_KEYS]
    assert all(m.help == names.METRIC_WORDS[k][1] for m, k in zip(at.metric, names.VAL_METRIC_KEYS))
    # talk to the pair: plain, then with the soft prompt, then steered: each changes the answers
    plain = _answers(at.button[0].click().run())
    at.toggle[0].set_value(True)
    prompted = _answers(at.button[0].click().run())
    assert prompted[0] != plain[0] and prompted[1] != plain[1]  # the prompt reaches both models
    assert at.slider[-1].label.startswith("ADL steering strength")
    at.slider[-1].set_value(8.0)
    steered = _answers(at.button[0].click().run())
    assert steered[0] == prompted[0] and not at.warning  # steering touches the finetuned side only


def _answers(at) -> tuple[str, str]:
    """The base's and the finetuned model's answers shown under "Try it"."""
    assert not at.exception, at.exception
    texts = [m.value for m in at.markdown]
    return texts[texts.index("**Base**") + 1], texts[texts.index("**Finetuned**") + 1]


def test_dashboard_shows_an_agent_transcript(run_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from finediff import names
    from finediff.agent.loop import Investigation
    from finediff.io import write_json

    inv = Investigation("Answers capitals wrongly.", "A longer account.", "answered", False,
                        {"llm_calls": 100, "model_interactions": 50, "tokens": 100000},
                        {"llm_calls": 2, "model_interactions": 1, "tokens": 900},
                        [{"role": "system", "content": "You are auditing."},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"id": "c0", "type": "function", "function": {"name": "ask", "arguments": "{}"}}]},
                         {"role": "tool", "tool": "ask", "arguments": "{}", "content": "base: 'Paris'"}], seconds=3.0)
    write_json(run_root / "sandbagging" / "run1" / names.AGENT_TRANSCRIPT, inv.as_dict())
    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(run_root))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert "Agent" in [t.label for t in at.tabs]
    texts = " ".join(m.value for m in at.markdown)
    assert "Answers capitals wrongly." in texts and "base: 'Paris'" in texts
    (run_root / "sandbagging" / "run1" / names.AGENT_TRANSCRIPT).unlink()


def test_dashboard_without_runs(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=60).run()
    assert not at.exception and "No finediff runs" in at.warning[0].value
    assert "python train.py experiment=audit model.adapter=DIR" in at.warning[0].value  # the audit, not a told run


def test_dashboard_opens_an_audit_with_its_verdict(tiny_dirs, tmp_path, monkeypatch):
    """An audit run: the verdict (the report's first screen) comes before every tab."""
    from streamlit.testing.v1 import AppTest

    from finediff.summary import read_verdict

    run = tmp_path / "audit" / "run1"
    run_train(tiny_dirs, run, "data.categories=null", "evidence.survey.max_texts_per_group=4",
              "evidence.findings.n_prompts=6", "evidence.steps=[findings,report]",
              values={"finediff.survey.MAX_NEW_TOKENS": 8, "finediff.survey.N_TRAIN": 8, "finediff.survey.N_VAL": 4,
                      "finediff.survey.MINING_GENERIC_TEXTS": 4,
                      "finediff.pipeline.steps.FINDINGS_SAMPLES_PER_PROMPT": 2,
                      "finediff.pipeline.steps.FINDINGS_MAX_NEW_TOKENS": 8})
    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert "Survey" in [t.label for t in at.tabs]
    v = read_verdict(run)
    first = "\n".join(f"* {s.headline}" for s in v.statements) or v.paragraph.split(" How sure:")[0]
    assert at.markdown[0].value == first
    assert f'class="finediff-confidence finediff-confidence-{v.confidence}"' in at.markdown[1].value
