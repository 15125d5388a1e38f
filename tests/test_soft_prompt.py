"""Soft prompt init, splicing, the trainable predicate, and gradient flow through both models."""

from __future__ import annotations

import pytest
import torch

from finediff.divergence import pair_divergence, pair_hidden
from finediff.errors import FinediffError
from finediff.soft_prompt import SoftPrompt, apply_trainable, embedding_norm, is_trainable, random_like, splice
from finediff.tiny import tiny_batch


def test_inits(tiny_pair):
    embed = tiny_pair.base.get_input_embeddings()
    V, D = embed.weight.shape
    for init in ("vocab", "random"):
        sp = SoftPrompt(embed, V, 5, init)
        assert sp.weight.shape == (5, D) and sp.weight.dtype == torch.float32
    text = SoftPrompt(embed, V, 6, "text", "hello there", tiny_pair.tokenizer)
    ids = tiny_pair.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(text.weight[0], embed.weight[ids[0]])
    rnd = SoftPrompt(embed, V, 8, "random")
    # norm-matched to real embeddings, not N(0, 1) (whose norm would be sqrt(D))
    assert rnd.weight.norm(dim=-1).mean().item() == pytest.approx(embedding_norm(embed, V), rel=1e-4)


def test_bad_init(tiny_pair):
    embed = tiny_pair.base.get_input_embeddings()
    with pytest.raises(FinediffError, match="unknown soft prompt init 'zeros'"):
        SoftPrompt(embed, 10, 4, "zeros")
    with pytest.raises(FinediffError, match="init_text"):
        SoftPrompt(embed, 10, 4, "text")
    with pytest.raises(FinediffError, match=">= 1"):
        SoftPrompt(embed, 10, 0)


def test_splice_shapes_mask_dtype():
    prompt = torch.randn(3, 4)
    embeds = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    e, m = splice(prompt, embeds, mask)
    assert e.shape == (2, 8, 4) and e.dtype == torch.float64
    assert m.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8]
    torch.testing.assert_close(e[1, :3], prompt.double())
    torch.testing.assert_close(e[:, 3:], embeds)
    assert splice(None, embeds, mask)[0] is embeds


def test_random_like_matches_norms():
    p = torch.randn(6, 10) * torch.arange(1, 7).unsqueeze(1)
    r = random_like(p, seed=3)
    torch.testing.assert_close(r.norm(dim=-1), p.norm(dim=-1))
    assert not torch.allclose(r, p)


def test_trainable_predicate():
    assert is_trainable("soft_prompt.weight")
    assert is_trainable("module.soft_prompt.weight")
    for name in ("pair.base.model.embed_tokens.weight", "pair.finetuned.lm_head.weight", "soft_prompt_x.weight"):
        assert not is_trainable(name)


def test_only_prompt_trains_and_gradient_reaches_it_through_both_models(tiny_pair, tiny_dirs):
    from lightning_modules import SoftPromptDivergence

    module = SoftPromptDivergence(tiny_pair, num_soft_prompt_tokens=4)
    trainable, frozen = apply_trainable(module)
    assert trainable == 4 * tiny_pair.hidden_size
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["soft_prompt.weight"]
    assert frozen == sum(p.numel() for p in tiny_pair.parameters())

    batch = tiny_batch(tiny_pair.tokenizer, ["What is 2 + 2?", "Name a capital city in Europe please."])
    prompt = module.soft_prompt()
    h_ft, h_base, mask = pair_hidden(tiny_pair, batch["input_ids"], batch["attention_mask"], prompt)
    assert mask[:, :4].sum() == 0 and mask[:, 4:].sum() == batch["attention_mask"].sum()
    for h in (h_ft, h_base):  # each model alone carries gradient to the prompt
        (g,) = torch.autograd.grad(h[mask].sum(), prompt, retain_graph=True)
        assert g.abs().sum() > 0
    loss = pair_divergence(tiny_pair, batch["input_ids"], batch["attention_mask"], prompt)
    loss.backward()
    assert module.soft_prompt.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_pair.parameters())
    assert not tiny_pair.base.training and not tiny_pair.finetuned.training
    module.train()
    assert not tiny_pair.base.training and not tiny_pair.finetuned.training


def test_padding_does_not_change_divergence(tiny_pair):
    tok = tiny_pair.tokenizer
    prompt = torch.randn(3, tiny_pair.hidden_size) * 0.5
    alone = tiny_batch(tok, ["Short one."])
    padded = tiny_batch(tok, ["Short one.", "A much longer text that forces padding on the first row of the batch."])
    a = pair_divergence(tiny_pair, alone["input_ids"], alone["attention_mask"], prompt)
    h_ft, h_base, mask = pair_hidden(tiny_pair, padded["input_ids"], padded["attention_mask"], prompt)
    from finediff.arch import output_head
    from finediff.divergence import chunked_divergence
    row0 = torch.zeros_like(mask)
    row0[0] = mask[0]
    b = chunked_divergence(h_ft, h_base, output_head(tiny_pair.finetuned), output_head(tiny_pair.base), row0)
    assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)


def test_gradient_checkpointing_same_gradient_less_memory(tiny_dirs):
    from finediff.memory import peak_extra_bytes
    from finediff.models import load_model_pair

    tok = load_model_pair(str(tiny_dirs["base"])).tokenizer
    # rows that differ from their first token: no shared prefix is run once for all of them
    batch = tiny_batch(tok, [f"{w} is it fair to lie to a friend to protect them? " * 6 for w in
                             ("So", "Then", "Now", "Well", "But", "And", "Yet", "Still")], max_length=None)
    grads, peaks = [], []
    for ckpt in (False, True):
        pair = load_model_pair(str(tiny_dirs["base"]), str(tiny_dirs["finetuned"]))
        if ckpt:
            pair.enable_gradient_checkpointing()
        pair.train()  # what Lightning does; the frozen pair must stay in eval mode
        assert not pair.base.model.layers[0].self_attn.training
        prompt = torch.nn.Parameter(torch.ones(2, pair.hidden_size) * 0.1)

        def step():
            pair_divergence(pair, batch["input_ids"], batch["attention_mask"], prompt, chunk_size=64).backward()

        peaks.append(peak_extra_bytes(step))
        grads.append(prompt.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert peaks[1] < 0.8 * peaks[0], peaks  # activations are recomputed, not kept


def test_splice_at_positions_and_text_mask():
    from finediff.soft_prompt import text_mask

    prompt = torch.full((2, 1), 9.0)
    embeds = torch.arange(10.0).reshape(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    pos = torch.tensor([1, 3])
    e, m = splice(prompt, embeds, mask, pos)
    assert e[..., 0].tolist() == [[0, 9, 9, 1, 2, 3, 4], [5, 6, 7, 9, 9, 8, 9]]
    assert m.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    assert text_mask(mask, 2, pos).int().tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert text_mask(mask, 0, pos).int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_prompt_starts_the_user_message(tiny_pair):
    """Under the chat template the prompt sits after the template header: positions before
    it are never scored, and the same body positions are scored with and without it."""
    from finediff.data import format_parts

    tok = tiny_pair.tokenizer
    prefix, body = format_parts(tok, "What is 2 + 2?")
    assert tok.decode(prefix) == "<|im_start|>user\n" and tok.decode(body).startswith("What is 2 + 2?")
    batch = tiny_batch(tok, ["What is 2 + 2?", "A longer question about the capital of France, please?"])
    assert batch["prompt_pos"].tolist() == [len(prefix)] * 2
    prompt = torch.randn(3, tiny_pair.hidden_size) * 0.5
    _, _, with_prompt = pair_hidden(tiny_pair, batch["input_ids"], batch["attention_mask"], prompt, batch["prompt_pos"])
    _, _, without = pair_hidden(tiny_pair, batch["input_ids"], batch["attention_mask"], None, batch["prompt_pos"])
    assert with_prompt.sum() == without.sum() == (batch["attention_mask"].sum() - 2 * len(prefix))


def test_mean_init_starts_near_the_vocabulary_centre_and_keeps_its_start(tiny_pair):
    from finediff.soft_prompt import SoftPrompt

    embed = tiny_pair.base.get_input_embeddings()
    centre = embed.weight.detach().float().mean(0)
    prompt = SoftPrompt(embed, embed.weight.shape[0], n_tokens=4, init="mean", seed=3)
    norm = embed.weight.detach().float().norm(dim=-1).mean()
    offsets = (prompt.weight.detach() - centre).norm(dim=-1)
    assert torch.allclose(offsets, torch.full((4,), 0.1 * norm.item()), rtol=0.05)
    assert not torch.equal(prompt.weight[0], prompt.weight[1])  # the positions differ
    assert prompt.start.equal(prompt.weight.detach())
    with torch.no_grad():
        prompt.weight.add_(1.0)
    assert not prompt.start.equal(prompt.weight.detach())  # the start stays where training began
    assert "start" not in prompt.state_dict()


def test_a_prompt_in_the_tokens_space_is_a_distribution_over_allowed_tokens(tiny_pair):
    """``space=tokens``: the prompt is the expected embedding of each position's
    distribution over the allowed tokens: the allowed tokens' mean at a ``mean`` start,
    half the start token at a ``vocab`` start, the token itself once the mass is on it,
    which projection returns."""
    from finediff.arch import embedding_table
    from finediff.hard_prompts import allowed_tokens, project

    embed, tok = tiny_pair.base.get_input_embeddings(), tiny_pair.tokenizer
    V = embed.weight.shape[0]
    allowed = allowed_tokens(tok, V)
    table = embedding_table(tiny_pair.base).detach()[allowed]
    mean = SoftPrompt(embed, V, 3, "mean", seed=1, space="tokens", allowed=allowed)
    assert mean.weight.shape == (3, int(allowed.sum())) and mean.hidden_size == table.shape[1]
    assert torch.allclose(mean(), table.mean(0).expand(3, -1), atol=1e-3)
    assert torch.equal(mean.start, mean().detach())
    vocab = SoftPrompt(embed, V, 3, "vocab", seed=1, space="tokens", allowed=allowed)
    assert torch.allclose(torch.softmax(vocab.weight, -1).max(-1).values, torch.full((3,), 0.5), atol=0.01)
    with torch.no_grad():
        vocab.weight.zero_()
        vocab.weight[:, :3] = torch.eye(3) * 100.0  # all the mass on the first three allowed tokens
    ids = allowed.nonzero().squeeze(1)[:3]
    assert torch.allclose(vocab(), embedding_table(tiny_pair.base)[ids], atol=1e-5)
    assert project(vocab().detach(), embedding_table(tiny_pair.base).detach(), allowed).equal(ids)


def test_a_tokens_space_prompt_trains_its_logits_through_both_models(tiny_pair):
    from lightning_modules import SoftPromptDivergence

    module = SoftPromptDivergence(tiny_pair, num_soft_prompt_tokens=2, init="mean", space="tokens",
                                  positions="text")
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["soft_prompt.weight"]
    assert module.soft_prompt.weight.shape == (2, int(module.allowed.sum()))
    batch = tiny_batch(tiny_pair.tokenizer, ["What is 2 + 2?", "Name a capital city in Europe please."])
    pair_divergence(tiny_pair, batch["input_ids"], batch["attention_mask"], module.soft_prompt()).backward()
    assert module.soft_prompt.weight.grad.abs().sum() > 0
    assert module.prompt_record()["prompt"].shape == (2, tiny_pair.hidden_size)
    assert module.prompt_record()["space"] == "tokens"


def test_a_tokens_space_prompt_needs_a_token_start(tiny_pair):
    from finediff.hard_prompts import allowed_tokens

    embed = tiny_pair.base.get_input_embeddings()
    V = embed.weight.shape[0]
    with pytest.raises(FinediffError, match="module.init=random has no token distribution"):
        SoftPrompt(embed, V, 2, "random", space="tokens", allowed=allowed_tokens(tiny_pair.tokenizer, V))
    with pytest.raises(FinediffError, match="unknown soft prompt space 'words'"):
        SoftPrompt(embed, V, 2, "vocab", space="words")
