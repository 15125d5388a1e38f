"""``model.placement``: the pair's models on chosen devices (split) or spread by one shared
accelerate device map (auto). On CPU the devices are all ``cpu``, so these tests check the
wiring (placed models stay put, hooks in place, the same numbers as an unplaced pair, a
whole run); the GPU test checks real device moves."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_train
from finediff import names
from finediff.activations import residual_stream
from finediff.divergence import pair_divergence
from finediff.errors import FinediffError
from finediff.generation import generate
from finediff.models import load_model_pair
from finediff.tiny import tiny_batch

TEXTS = ["What is the capital of France?", "Name a large animal.", "How do I boil an egg?"]


def _numbers(pair) -> tuple:
    torch.manual_seed(0)
    batch = tiny_batch(pair.tokenizer, TEXTS)
    prompt = torch.randn(3, pair.hidden_size) * 0.1
    div = pair_divergence(pair, batch["input_ids"], batch["attention_mask"], prompt)
    acts = residual_stream(pair.finetuned, batch["input_ids"], batch["attention_mask"], [0, 1])
    acts_base = residual_stream(pair.base, batch["input_ids"], batch["attention_mask"], [1])
    gens = generate(pair.finetuned, pair.tokenizer, TEXTS, max_new_tokens=5, do_sample=False, progress=False)
    return div.item(), (acts[1] - acts_base[1]).abs().mean().item(), gens


@pytest.mark.parametrize("placement,devices,merge", [("split", ["cpu", "cpu"], True), ("auto", ["cpu"], True),
                                                     ("auto", ["cpu"], False)])
def test_placed_pair_gives_the_same_numbers(tiny_dirs, placement, devices, merge):
    base, adapter = str(tiny_dirs["base"]), str(tiny_dirs["adapter"])
    plain = load_model_pair(base, adapter=adapter, merge_adapter=merge)
    placed = load_model_pair(base, adapter=adapter, merge_adapter=merge, placement=placement, devices=devices)
    assert placed.placement == placement and plain.placement is None
    assert placed.shares_weights == (not merge)
    if placement == "auto":  # accelerate's hooks are on (they move activations between devices on GPUs)
        assert hasattr(placed.base, "_hf_hook")
    # the owner's .to() leaves placed models alone (Lightning moves the module that holds them)
    placed.to(torch.float64)
    assert next(placed.base.parameters()).dtype == torch.float32
    a, b = _numbers(plain), _numbers(placed)
    assert a[0] == pytest.approx(b[0], abs=1e-5) and a[0] > 0
    assert a[1] == pytest.approx(b[1], abs=1e-5) and a[1] > 0
    assert a[2] == b[2]


def test_placement_errors(tiny_dirs):
    base, adapter = str(tiny_dirs["base"]), str(tiny_dirs["adapter"])
    with pytest.raises(FinediffError, match="merge_adapter=true"):
        load_model_pair(base, adapter=adapter, merge_adapter=False, placement="split", devices=["cpu", "cpu"])
    with pytest.raises(FinediffError, match="choose null, split or auto"):
        load_model_pair(base, adapter=adapter, placement="everywhere")
    with pytest.raises(FinediffError, match="needs 2 devices"):
        load_model_pair(base, adapter=adapter, merge_adapter=True, placement="split", devices=["cpu"])
    with pytest.raises(FinediffError, match="cuda:7 is not available"):
        load_model_pair(base, adapter=adapter, merge_adapter=True, placement="split", devices=["cpu", "cuda:7"])
    with pytest.raises(FinediffError, match="model.devices"):
        load_model_pair(base, adapter=adapter, merge_adapter=True, placement="split", devices=["cpu", "tpu:x"])


def test_placed_run_trains_and_writes_evidence(tiny_dirs, tmp_path):
    """A whole train.py run (answer objective, evidence steps) on a split pair."""
    run_train(tiny_dirs, tmp_path, "model.placement=split", "model.devices=[cpu,cpu]",
              "evidence.steps=[hard_prompts,lens]")
    assert (tmp_path / names.METRICS_FILE).exists()
    assert (tmp_path / names.HARD_PROMPTS_FILE).exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_split_and_auto_on_two_gpus(tiny_dirs, tmp_path):
    """Base on cuda:0, finetuned on cuda:1 (and both spread over the two): the same
    numbers as on the CPU, and a run trains."""
    base, adapter = str(tiny_dirs["base"]), str(tiny_dirs["adapter"])
    cpu = _numbers(load_model_pair(base, adapter=adapter, merge_adapter=True))
    for placement, devices in (("split", ["cuda:0", "cuda:1"]), ("auto", ["cuda:0", "cuda:1"])):
        pair = load_model_pair(base, adapter=adapter, merge_adapter=True, placement=placement, devices=devices)
        got = _numbers(pair)
        assert got[0] == pytest.approx(cpu[0], rel=1e-3) and got[1] == pytest.approx(cpu[1], rel=1e-3)
    run_train(tiny_dirs, tmp_path, "trainer=gpu", "trainer.max_steps=3", "model.placement=split",
              "model.devices=[cuda:0,cuda:1]")
    assert (tmp_path / names.METRICS_FILE).exists()
