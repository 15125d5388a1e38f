"""The memory planner: sizes from the config alone (meta device), strategies that follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finediff.plan import GIB, gpus_needed, model_size, plan
from tests.conftest import ROOT


def test_sizes_match_the_loaded_model(tiny_dirs, tiny_pair):
    size, _ = model_size(str(tiny_dirs["base"]), str(tiny_dirs["adapter"]), dtype="float32", merge_adapter=False)
    tensors = {id(t): t for t in [*tiny_pair.base.parameters(), *tiny_pair.base.buffers()]}
    assert size.total == sum(t.numel() * t.element_size() for t in tensors.values())
    assert size.copies == 1 and size.adapter > 0
    merged, _ = model_size(str(tiny_dirs["base"]), str(tiny_dirs["adapter"]), dtype="bfloat16", merge_adapter=True)
    assert merged.copies == 2 and merged.total * 2 == pytest.approx(size.total, rel=1e-3)  # bf16 halves it


@pytest.fixture(scope="module")
def big_config(tmp_path_factory):
    """A 70B-shaped Llama config (no weights): the planner must never allocate them."""
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("llama70b")
    LlamaConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8).save_pretrained(d)
    return d


def test_a_70b_pair_needs_sharding(big_config):
    result = plan(str(big_config), dtype="bfloat16", merge_adapter=True, gpus=(80,), max_gpus=8)
    size = result["model"]
    assert 125 * GIB < size["total"] < 135 * GIB  # 70.6B parameters x 2 bytes
    need = result["gpus_needed"]["80"]
    assert need["single"] is None and need["split"] is None  # one copy alone is over 80 GiB
    # two copies of 131 GiB + 20% over 79 GiB usable: at least 4 GPUs whichever way
    assert need["fsdp"] == need["zero3"] and 4 <= need["fsdp"] <= 5
    assert need["auto"] is not None and need["auto"] >= 4


def test_one_copy_halves_what_is_needed(big_config):
    shared, model = model_size(str(big_config), dtype="bfloat16", merge_adapter=False)
    shared.copies = 1
    two = gpus_needed(shared.__class__(**{**shared.__dict__, "copies": 2}), model, 80.0)
    one = gpus_needed(shared, model, 80.0)
    assert one["fsdp"] < two["fsdp"] and one["auto"] < two["auto"]


def test_command_line(tiny_dirs):
    out = subprocess.run([sys.executable, str(ROOT / "plan.py"), f"model.base={tiny_dirs['base']}",
                          "plan.gpus=[1]", "plan.reserve_gib=0", "plan.json=true"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["gpus_needed"]["1"]["single"] == 1 and result["dtype"] == "float32"  # train's model.dtype
    bad = subprocess.run([sys.executable, str(ROOT / "plan.py"), "model.bse=x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "model.bse" in bad.stderr
    assert bad.stderr.startswith("finediff: error: ")


def test_the_real_config_is_composed():
    """The pair a run would load: experiment= and model.* as in train.py, plan.* the planner's."""
    from plan import compose_config, settings

    model, options = settings(compose_config(["experiment=sandbagging", "model.dtype=bfloat16", "plan.gpus=80"]))
    assert model["base"] == "embedded:smollm2" and Path(model["adapter"]) == ROOT / "organisms" / "sandbagging"
    assert model["dtype"] == "bfloat16" and model["merge_adapter"] is True  # configs/model/smollm2.yaml
    assert options == {"gpus": [80], "max_gpus": 8, "reserve_gib": 1.0, "overhead": 0.2, "json": False}


@pytest.mark.parametrize("argv,message", [
    (["model.bse=x"], "Could not override 'model.bse': Key 'bse' not in 'ModelSchema'"),
    (["plan.nope=1"], "Could not override 'plan.nope'"),
    (["plan.gpus=[1"], "cannot read the override 'plan.gpus=[1'"),
    (["model.base"], "cannot read the override 'model.base'"),
    (["experiment=nope"], "Could not find 'experiment/nope' (available: audit, backdoor,"),
    (["model.base=${nope}"], "model.base: Interpolation key 'nope' not found"),
    (["plan.max_gpus=0"], "plan.max_gpus must be >= 1"),
    (["plan.json=maybe"], "plan.json must be true or false"),
    (["model.base=null"], "field 'model.base' is not Optional"),
])
def test_bad_overrides_are_one_line(argv, message):
    from finediff.errors import FinediffError
    from plan import compose_config, settings

    with pytest.raises(FinediffError) as info:
        settings(compose_config(argv))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
