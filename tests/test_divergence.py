"""Divergences against a brute-force reference, masks, chunk boundaries, gradients, memory."""

from __future__ import annotations

import math

import pytest
import torch

from finediff.divergence import Divergence, chunked_divergence, token_divergence
from finediff.errors import FinediffError
from finediff.memory import peak_extra_bytes

KINDS = [d.value for d in Divergence]


def brute_force(lf: torch.Tensor, lb: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Per-position divergence in float64 from explicit probabilities, element by element."""
    p = torch.softmax(lf.double() / temperature, -1)
    q = torch.softmax(lb.double() / temperature, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if kind == "kl_ft_base":
        return kl(p, q)
    if kind == "kl_base_ft":
        return kl(q, p)
    if kind == "symmetric_kl":
        return 0.5 * (kl(p, q) + kl(q, p))
    m = 0.5 * (p + q)
    return 0.5 * (kl(p, m) + kl(q, m))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_token_divergence_matches_brute_force(kind, temperature):
    g = torch.Generator().manual_seed(0)
    lf, lb = torch.randn(3, 5, 37, generator=g) * 3, torch.randn(3, 5, 37, generator=g) * 3
    got = token_divergence(lf, lb, kind, temperature)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got.double(), brute_force(lf, lb, kind, temperature), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_is_zero_and_nonnegative(kind):
    logits = torch.randn(4, 11, 50)
    assert token_divergence(logits, logits, kind).abs().max() < 1e-5
    other = torch.randn(4, 11, 50) * 4
    assert (token_divergence(logits, other, kind) >= -1e-6).all()


def test_jsd_bounded_by_log2():
    lf = torch.full((1, 10), -1e4)
    lf[0, 0] = 1e4
    lb = torch.full((1, 10), -1e4)
    lb[0, 1] = 1e4
    assert token_divergence(lf, lb, "jsd").item() == pytest.approx(math.log(2), rel=1e-4)
    assert torch.isfinite(token_divergence(lf, lb, "kl_ft_base")).all()  # log_softmax, no eps


def test_bad_kind_and_temperature():
    x = torch.randn(2, 5)
    with pytest.raises(FinediffError, match="unknown divergence 'kl'"):
        token_divergence(x, x, "kl")
    with pytest.raises(FinediffError, match="temperature"):
        token_divergence(x, x, "jsd", temperature=0.0)


def _setup(B=3, L=13, D=8, V=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_ft = torch.randn(B, L, D, generator=g, requires_grad=True)
    h_base = torch.randn(B, L, D, generator=g, requires_grad=True)
    head_ft = torch.nn.Linear(D, V, bias=False)
    head_base = torch.nn.Linear(D, V, bias=False)
    for head in (head_ft, head_base):
        head.weight.data = torch.randn(V, D, generator=g)
        head.weight.requires_grad_(False)
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[:, :2] = False  # e.g. soft-prompt positions
    return h_ft, h_base, head_ft, head_base, mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 1000])
def test_chunked_matches_reference_values_and_grads(kind, chunk_size):
    h_ft, h_base, head_ft, head_base, mask = _setup()
    ref_tok = brute_force(head_ft(h_ft), head_base(h_base), kind)
    ref = (ref_tok * mask).sum() / mask.sum()
    ref.backward()
    g_ref = h_ft.grad.double().clone(), h_base.grad.double().clone()
    h_ft.grad = h_base.grad = None

    got = chunked_divergence(h_ft, h_base, head_ft, head_base, mask, kind, chunk_size=chunk_size)
    got.backward()
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(h_ft.grad.double(), g_ref[0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(h_base.grad.double(), g_ref[1], rtol=1e-3, atol=1e-6)
    # masked-out positions get no gradient at all
    assert h_ft.grad[~mask].abs().max() == 0


def test_masked_positions_do_not_change_value():
    h_ft, h_base, head_ft, head_base, mask = _setup()
    a = chunked_divergence(h_ft, h_base, head_ft, head_base, mask, chunk_size=4)
    h_ft2 = h_ft.detach().clone()
    h_ft2[~mask] = 1e3  # garbage at padding / prompt positions
    b = chunked_divergence(h_ft2, h_base, head_ft, head_base, mask, chunk_size=4)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_empty_mask_is_zero_with_grad():
    h_ft, h_base, head_ft, head_base, mask = _setup()
    out = chunked_divergence(h_ft, h_base, head_ft, head_base, torch.zeros_like(mask))
    assert out.item() == 0.0
    out.backward()


def test_chunking_bounds_peak_memory():
    """Peak extra memory of loss + backward: chunked <= 1/4 of unchunked (smaller shapes
    than the benchmark's 8 x 512 x 49,152 so the suite stays fast)."""
    B, L, D, V = 4, 256, 64, 8192
    h_ft, h_base, head_ft, head_base, _ = _setup(B, L, D, V)
    mask = torch.ones(B, L, dtype=torch.bool)

    def run(chunk):
        def fn():
            chunked_divergence(h_ft, h_base, head_ft, head_base, mask, chunk_size=chunk).backward()
            h_ft.grad = h_base.grad = None
        return fn

    chunked, unchunked = peak_extra_bytes(run(128)), peak_extra_bytes(run(None))
    assert unchunked > B * L * V * 4  # at least one full logits tensor
    assert chunked <= 0.25 * unchunked, (chunked, unchunked)


def test_a_shared_prefix_is_run_once_with_the_same_hidden_states_and_answers(tiny_pair):
    """The leading tokens all rows share (a chat template's system turn) are run once and
    their cache given to each row: the hidden states, and the greedy and sampled answers,
    are those of every row run whole."""
    import finediff.divergence as D
    from finediff.data import format_text, pad_rows
    from finediff.generation import generate, shared_prefix_batch

    tok, model = tiny_pair.tokenizer, tiny_pair.finetuned
    prompts = ["the cat sat on the mat", "a dog", "birds fly south in the winter, far away", "hello there"]
    rows = [format_text(tok, p) for p in prompts]
    ids, mask = pad_rows(rows, tok.pad_token_id)  # right padding: the shared start is aligned
    assert D.shared_prefix(D.embed_ids(model, ids), mask) >= D.SHARED_PREFIX_MIN
    with torch.no_grad():
        shared = D.final_hidden(model, D.embed_ids(model, ids), mask)
        for r, row in enumerate(rows):
            alone = D.final_hidden(model, D.embed_ids(model, torch.tensor([row])), torch.ones(1, len(row)))
            torch.testing.assert_close(shared[r, :len(row)], alone[0], rtol=1e-4, atol=1e-4)
    _, _, k = shared_prefix_batch(rows, tok.pad_token_id)
    assert k >= D.SHARED_PREFIX_MIN
    for sample in (False, True):
        once = generate(model, tok, prompts, max_new_tokens=8, do_sample=sample, return_ids=True, progress=False)
        old, D.SHARED_PREFIX_MIN = D.SHARED_PREFIX_MIN, 10 ** 9  # every row run whole, left-padded
        try:
            whole = generate(model, tok, prompts, max_new_tokens=8, do_sample=sample, return_ids=True, progress=False)
        finally:
            D.SHARED_PREFIX_MIN = old
        assert [g for _, g in once] == [g for _, g in whole]


@pytest.mark.parametrize("window", [16, 256])
def test_a_shared_prefix_under_sliding_window_layers_gives_the_same_answers(tiny_pair, window):
    """Gemma 3's sliding-window layers: the shared prefix is run once only where the window
    sees the whole sequence (256); otherwise (16) every row runs whole. Either way the answers
    are those of every row run whole."""
    import finediff.divergence as D
    from finediff.data import format_text
    from finediff.generation import generate, shared_prefix_batch
    from finediff.tiny import tiny_model

    torch.manual_seed(0)
    tok = tiny_pair.tokenizer
    model = tiny_model(len(tok), arch="gemma3")
    model.config.sliding_window = window
    prompts = ["the cat sat on the mat", "a dog", "birds fly south in the winter", "hello there"]
    _, _, k = shared_prefix_batch([format_text(tok, p) for p in prompts], tok.pad_token_id, model, 8)
    assert (k >= D.SHARED_PREFIX_MIN) == (window == 256)
    once = generate(model, tok, prompts, max_new_tokens=8, return_ids=True, progress=False)
    old, D.SHARED_PREFIX_MIN = D.SHARED_PREFIX_MIN, 10 ** 9
    try:
        whole = generate(model, tok, prompts, max_new_tokens=8, return_ids=True, progress=False)
    finally:
        D.SHARED_PREFIX_MIN = old
    assert [g for _, g in once] == [g for _, g in whole]
    # teacher forcing (right padding, nothing between the shared tokens and a row's own): run once at any window
    from finediff.data import pad_rows

    rows = [format_text(tok, p) + [7] * 20 for p in prompts]  # longer than the small window
    ids, mask = pad_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        shared = D.final_hidden(model, D.embed_ids(model, ids), mask)
        for r, row in enumerate(rows):
            alone = D.final_hidden(model, D.embed_ids(model, torch.tensor([row])), torch.ones(1, len(row)))
            torch.testing.assert_close(shared[r, :len(row)], alone[0], rtol=1e-4, atol=1e-4)


def test_kl_computed_in_place_without_a_gradient_is_the_same_and_leaves_the_logits_alone():
    from finediff.divergence import token_divergence

    torch.manual_seed(0)
    lf, lb = torch.randn(5, 7, 301), torch.randn(5, 7, 301)
    kept = lf.clone(), lb.clone()
    for kind in ("kl_ft_base", "kl_base_ft"):
        with torch.no_grad():
            fast = token_divergence(lf, lb, kind)
        slow = token_divergence(lf.clone().requires_grad_(), lb, kind)  # the out-of-place path
        torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=0)
        slow.sum().backward()  # the gradient path still works
    assert torch.equal(lf, kept[0]) and torch.equal(lb, kept[1])
