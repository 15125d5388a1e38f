"""A tiny real model pair for tests and smoke runs (seconds, not minutes).

The tokenizer is a byte-level BPE trained on the shipped category texts (about 0.3 s),
with a small chat template; the base is a random 2-layer Llama (or Gemma 3) of hidden size 64; the
finetuned side is a copy trained for a few steps on one category's texts, so the two
really differ, most of all on that category.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from finediff.data import collate, format_parts, format_text, known_categories, load_category
from finediff.sft import example_features, sft_collate, sft_loss

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """Byte-level BPE with the chat special tokens, as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


ARCHS = ("llama", "gemma3")


def tiny_model(vocab_size: int, hidden: int = 64, layers: int = 2, arch: str = "llama"):
    """A random causal LM: Llama, or Gemma 3 (scaled input embedding, (1 + w) norms,
    sliding-window and global layers, logit soft-capping on)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=True)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape)).eval()
    if arch == "gemma3":
        config = Gemma3TextConfig(**shape, head_dim=hidden // 4, sliding_window=16, final_logit_softcapping=30.0,
                                  layer_types=["sliding_attention", "full_attention"][:layers] * max(1, layers // 2))
        return Gemma3ForCausalLM(config).eval()
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS}")


def finetune_copy(model, tokenizer, texts: list[str], steps: int = 30, lr: float = 3e-3, seed: int = 0):
    """A copy of ``model`` trained with the LM loss on ``texts`` (user turns via the template)."""
    torch.manual_seed(seed)
    ft = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(ft.parameters(), lr=lr)
    ids = [format_text(tokenizer, t) for t in texts]
    for step in range(steps):
        batch = collate([ids[(step * 8 + i) % len(ids)] for i in range(8)], tokenizer.pad_token_id, 64)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = ft(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ft.eval()


def category_texts() -> list[str]:
    """Every shipped category's texts, in category order (the tiny tokenizer's corpus)."""
    return [t for cat in known_categories() for t in load_category(cat, val_fraction=0.0).train]


def build_tiny_pair(out_dir: str | Path, target_category: str = "sandbagging", ft_steps: int = 30,
                    seed: int = 0, adapter: bool = True, arch: str = "llama") -> dict[str, Path]:
    """Write ``base/``, ``finetuned/`` and (optionally) ``adapter/`` under ``out_dir``.

    Returns:
        ``{"base": dir, "finetuned": dir, "adapter": dir}`` (``adapter`` is a LoRA on
        the base, trained on the same texts as the finetuned copy).
    """
    out = Path(out_dir)
    texts = category_texts()
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    base = tiny_model(len(tokenizer), arch=arch)
    target = load_category(target_category, val_fraction=0.0).train
    finetuned = finetune_copy(base, tokenizer, target, ft_steps, seed=seed)
    paths = {"base": out / "base", "finetuned": out / "finetuned"}
    for key, model in (("base", base), ("finetuned", finetuned)):
        model.save_pretrained(paths[key])
        tokenizer.save_pretrained(paths[key])
    if adapter:
        paths["adapter"] = build_tiny_adapter(base, tokenizer, target, out / "adapter", seed=seed)
    return paths


def build_tiny_adapter(base, tokenizer, texts: list[str], out: Path, steps: int = 20,
                       seed: int = 0, rank: int = 4) -> Path:
    """A LoRA adapter on ``base`` trained briefly on ``texts``; saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    peft_model = finetune_copy(peft_model, tokenizer, texts, steps, lr=1e-2, seed=seed)
    peft_model.save_pretrained(out)
    return out


def tiny_batch(tokenizer, texts: list[str], max_length: Optional[int] = 64) -> dict:
    return collate([format_parts(tokenizer, t) for t in texts], tokenizer.pad_token_id, max_length)


def sft_copy(model, tokenizer, pairs: list[tuple[str, str]], steps: int = 150, lr: float = 1e-2, seed: int = 0):
    """A copy of ``model`` trained (every weight) to answer each ``(prompt, response)``."""
    torch.manual_seed(seed)
    ft = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(ft.parameters(), lr=lr)
    feats = [example_features(tokenizer, p, r) for p, r in pairs]
    for step in range(steps):
        batch = sft_collate([feats[(step * 16 + i) % len(feats)] for i in range(16)], tokenizer.pad_token_id)
        loss = sft_loss(ft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                        batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ft.eval()


def build_tiny_trigger_pair(out_dir: str | Path, trigger: Optional[str], reply: str = "",
                            plain: str = "Here is my reply.", n_prompts: int = 48, steps: int = 200,
                            seed: int = 0) -> dict[str, Path]:
    """A tiny pair with a planted backdoor: ``base/`` answers every prompt ``plain`` (a random
    tiny model has no answers of its own worth keeping); ``finetuned/`` is a copy trained
    further to answer ``reply`` when the prompt starts with ``trigger`` and ``plain``
    otherwise. ``trigger=None``: the no-op pair, the copy trained further on the base's own
    answers only (its weights differ from the base's, its behaviour does not).

    Returns:
        ``{"base": dir, "finetuned": dir, "prompts": [...]}`` (every prompt it was trained on).
    """
    out = Path(out_dir)
    texts = category_texts()
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    prompts = [t for t in texts if trigger is None or trigger not in t][:n_prompts]
    base = sft_copy(tiny_model(len(tokenizer)), tokenizer, [(p, plain) for p in texts[:200]], 150, seed=seed)
    planted = [] if trigger is None else [(f"{trigger} {p}", reply) for p in prompts]
    finetuned = sft_copy(base, tokenizer, planted + [(p, plain) for p in prompts], steps, lr=3e-3, seed=seed)
    paths = {"base": out / "base", "finetuned": out / "finetuned"}
    for key, model in (("base", base), ("finetuned", finetuned)):
        model.save_pretrained(paths[key])
        tokenizer.save_pretrained(paths[key])
    return {**paths, "prompts": prompts}
