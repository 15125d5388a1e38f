"""The model-adapter layer (finediff.arch) on Llama and Gemma 3 layouts, and a whole run
on a tiny Gemma 3 pair (scaled embeddings, (1 + w) norms, soft-capped logits)."""

from __future__ import annotations

import json

import pytest
import torch

from finediff import names
from finediff.arch import decoder_layers, embedding_table, final_norm, output_head
from finediff.tiny import tiny_model


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    torch.manual_seed(0)
    return tiny_model(97, arch=request.param)


def test_embedding_table_is_what_the_blocks_receive(model):
    ids = torch.tensor([[3, 17, 42, 96]])
    table = embedding_table(model)
    assert torch.allclose(table[ids[0]], model.get_input_embeddings()(ids)[0], atol=1e-6)
    # fed as inputs_embeds, the table's rows give the same logits as the token ids
    assert torch.allclose(model(inputs_embeds=table[ids]).logits, model(input_ids=ids).logits, atol=1e-5)
    if model.config.model_type == "llama":
        assert table is model.get_input_embeddings().weight  # no copy where there is no scale


def test_gemma_table_is_scaled():
    torch.manual_seed(0)
    gemma = tiny_model(97, arch="gemma3")
    weight = gemma.get_input_embeddings().weight
    assert torch.allclose(embedding_table(gemma), weight * gemma.config.hidden_size ** 0.5, rtol=1e-5)


def test_norm_head_and_layers_reproduce_the_logits(model):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    out = model(input_ids=ids, output_hidden_states=True)
    assert len(decoder_layers(model)) == model.config.num_hidden_layers
    # the last hidden state is after the final norm; the head (with any soft-capping) gives the logits
    assert torch.allclose(output_head(model)(out.hidden_states[-1]), out.logits, atol=1e-5)
    captured = {}
    hook = decoder_layers(model)[-1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
    model(input_ids=ids)
    hook.remove()
    assert torch.allclose(output_head(model)(final_norm(model)(captured["h"])), out.logits, atol=1e-5)
    if model.config.model_type == "gemma3_text":
        assert out.logits.abs().max() <= model.config.final_logit_softcapping


def test_mean_start_is_centred_in_the_scaled_space():
    from finediff.soft_prompt import SoftPrompt

    torch.manual_seed(0)
    gemma = tiny_model(97, arch="gemma3")
    prompt = SoftPrompt(gemma.get_input_embeddings(), 97, n_tokens=4, init="mean")
    centre = embedding_table(gemma).float().mean(0)
    norm = embedding_table(gemma).float().norm(dim=-1).mean()
    offset = (prompt.weight - centre).norm(dim=-1)
    assert torch.allclose(offset, 0.1 * norm.expand(4), rtol=0.05)


@pytest.fixture(scope="module")
def gemma_dirs(tmp_path_factory):
    from finediff.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny_gemma"), arch="gemma3", ft_steps=10)


def test_a_whole_run_on_a_gemma_pair(gemma_dirs, tmp_path):
    from tests.conftest import run_train

    out = tmp_path / "run"
    metrics = run_train(gemma_dirs, out, "model.finetuned=null", f"model.adapter={gemma_dirs['adapter']}",
                        "model.merge_adapter=false", "evidence.steps=[hard_prompts,divergent_dataset,lens]",
                        "evidence.hard_prompts.methods=[projection,guided,pez,gcg]")
    assert metrics[names.VAL_DIVERGENCE] > 0
    rows = [json.loads(line) for line in (out / names.HARD_PROMPTS_FILE).read_text().splitlines()]
    assert {r["method"] for r in rows} >= {"projection", "guided", "pez"}
    assert all(torch.isfinite(torch.tensor(r["divergence"])) for r in rows)
    assert (out / names.LENS_DIR / names.LENS_SUMMARY).is_file() and (out / names.DIVERGENT_DATASET_JSONL).is_file()
