"""The Streamlit dashboard, driven by Streamlit's AppTest on a real tiny run."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run_train


@pytest.fixture(scope="module")
def run_root(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_train(tiny_dirs, root / "sandbagging" / "run1", "experiment=sandbagging", "model.adapter=null",
              f"model.base={tiny_dirs['base']}", f"model.finetuned={tiny_dirs['finetuned']}")
    return root


def test_dashboard_discovers_and_shows_a_run(run_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(run_root))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value == "sandbagging/run1"
    labels = [t.label for t in at.tabs]
    for label in ("Overview", "Comparison", "Hard prompts", "Divergent dataset", "Analysis", "Clusters", "ADL",
                  "Try it"):
        assert label in labels
    assert [m.label for m in at.metric][:3] == ["val/divergence", "val/divergence_no_prompt",
                                                "val/divergence_random_prompt"]
    # talk to the pair: soft prompt on, steering on
    at.toggle[0].set_value(True)
    at.slider[-1].set_value(2.0)
    at.button[0].click().run()
    assert not at.exception, at.exception
    texts = [m.value for m in at.markdown]
    assert "**Base**" in texts and "**Finetuned**" in texts


def test_dashboard_without_runs(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FINEDIFF_OUTPUTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=60).run()
    assert not at.exception and "No finediff runs" in at.warning[0].value
