"""Diff mining: which tokens does the finetune push up, and what topics do they form?

At every position of a text the finetuned model answered, both models are teacher-forced
and the logit difference ``logits_ft - logits_base`` is taken over the vocabulary. The
``top_k`` tokens whose logit rises most are counted, once per position, when the rise is
at least ``min_diff`` (so an unchanged pair counts nothing) and the finetuned model gives
the token at least ``min_prob`` there (a LoRA shifts the logits of many tokens it would
never say; those are noise). Only tokens that start a word count, aggregated to words
(decoded, stripped, lower-cased; punctuation, single letters and English stop words
dropped), overall and per text, and a non-negative matrix factorisation of the text-by-word counts groups the
words into a few topics. The result is ``diff_mining.json`` and a bar chart
``diff_mining.png`` in the run folder.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from finediff import names
from finediff.arch import embed_ids, output_head
from finediff.data import collate
from finediff.divergence import final_hidden
from finediff.io import atomic_path, read_json, write_json

_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)


def token_word(tokenizer, token_id: int, word_start: bool = False) -> Optional[str]:
    """The word a token spells (lower case), or None for punctuation, digits, single
    letters, English stop words and special tokens (and, with ``word_start``, pieces that
    continue a word)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    raw = tokenizer.decode([token_id], skip_special_tokens=True)
    if word_start and not raw.startswith((" ", "\n")):
        return None
    text = raw.strip().lower()
    m = _WORD.fullmatch(text)
    return text if m and len(text) >= 2 and text not in ENGLISH_STOP_WORDS else None


@dataclass
class MinedWord:
    word: str
    count: int
    """Positions where one of the word's tokens was among the top rises."""
    texts: int
    """Texts with at least one such position."""
    mean_rise: float
    """Mean logit rise (ft - base) where it was counted."""


@dataclass
class DiffMining:
    """What :class:`DiffMiner` found."""

    top_k: int
    min_diff: float
    min_prob: float
    n_texts: int
    n_positions: int
    words: list[MinedWord] = field(default_factory=list)
    """Highest count first."""
    topics: list[list[str]] = field(default_factory=list)
    """Each topic's words, strongest first."""
    generic_words: list[MinedWord] = field(default_factory=list)
    """The same count over generic text (read, not answered): what the finetune pushes
    up even where nothing asks for it."""
    n_generic_texts: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffMining":
        d = dict(d)
        d["words"] = [MinedWord(**w) for w in d.get("words", [])]
        d["generic_words"] = [MinedWord(**w) for w in d.get("generic_words", [])]
        return cls(**d)

    @classmethod
    def read(cls, path: Path) -> "DiffMining":
        return cls.from_dict(read_json(path))


class DiffMiner:
    """Accumulates top logit rises over teacher-forced answers, one text at a time."""

    def __init__(self, tokenizer, top_k: int = 20, min_diff: float = 2.0, min_prob: float = 1e-3):
        self.tokenizer, self.top_k, self.min_diff, self.min_prob = tokenizer, top_k, min_diff, min_prob
        self._words: dict[int, Optional[str]] = {}
        self.per_text: list[Counter] = []
        self.rise: dict[str, float] = defaultdict(float)
        self.n_positions = 0

    def _word(self, token_id: int) -> Optional[str]:
        if token_id not in self._words:
            self._words[token_id] = token_word(self.tokenizer, token_id, word_start=True)
        return self._words[token_id]

    @torch.no_grad()
    def add(self, logits_ft_RV: torch.Tensor, logits_base_RV: torch.Tensor) -> None:
        """One text's response positions: ``[R, V]`` logits of each model."""
        counts: Counter = Counter()
        self.n_positions += logits_ft_RV.shape[0]
        if logits_ft_RV.shape[0]:
            diff = (logits_ft_RV.float() - logits_base_RV.float())
            values, ids = diff.topk(min(self.top_k, diff.shape[-1]), dim=-1)
            prob = logits_ft_RV.float().softmax(-1).gather(-1, ids)
            keep = (values >= self.min_diff) & (prob >= self.min_prob)
            for v, i in zip(values[keep].tolist(), ids[keep].tolist()):
                word = self._word(i)
                if word:
                    counts[word] += 1
                    self.rise[word] += v
        self.per_text.append(counts)

    def result(self, n_words: int = 40, n_topics: int = 3, topic_words: int = 6) -> DiffMining:
        total: Counter = Counter()
        texts: Counter = Counter()
        for c in self.per_text:
            total.update(c)
            texts.update(c.keys())
        words = [MinedWord(w, n, texts[w], self.rise[w] / n) for w, n in total.most_common(n_words)]
        return DiffMining(self.top_k, self.min_diff, self.min_prob, len(self.per_text), self.n_positions, words,
                          self._topics([w.word for w in words], n_topics, topic_words))

    def _topics(self, vocab: list[str], n_topics: int, topic_words: int) -> list[list[str]]:
        """NMF over the text-by-word count matrix (texts with no mined word left out)."""
        rows = [[c[w] for w in vocab] for c in self.per_text if any(c[w] for w in vocab)]
        k = min(n_topics, len(rows), len(vocab))
        if k < 1:
            return []
        if k == 1:
            return [vocab[:topic_words]]
        from sklearn.decomposition import NMF

        model = NMF(n_components=k, init="nndsvda", random_state=0, max_iter=500)
        model.fit(np.asarray(rows, dtype=float))
        topics = []
        for comp in model.components_:
            order = [i for i in comp.argsort()[::-1] if comp[i] > 0][:topic_words]
            if order:
                topics.append([vocab[i] for i in order])
        return topics


def mine(pair, prompts: list[str], responses: list[list[int]], top_k: int = 20, min_diff: float = 2.0,
         min_prob: float = 1e-3, batch_size: int = 8, progress: bool = False) -> DiffMining:
    """Diff mining over the finetuned model's answers ``responses`` (token ids) to ``prompts``."""
    from finediff.divergent_dataset import teacher_forced

    miner = DiffMiner(pair.tokenizer, top_k, min_diff, min_prob)
    for lf, lb in teacher_forced(pair, prompts, responses, batch_size, progress, "diff mining"):
        miner.add(lf, lb)
    return miner.result()


@torch.no_grad()
def mine_texts(miner: DiffMiner, pair, texts: list[str], max_length: int = 64, batch_size: int = 8,
               progress: bool = False) -> DiffMiner:
    """Feed ``miner`` every position of plain ``texts`` (no chat template), both models
    reading the same tokens."""
    heads = output_head(pair.finetuned), output_head(pair.base)
    tok = pair.tokenizer
    for i in tqdm(range(0, len(texts), batch_size), desc="diff mining (generic text)", disable=not progress):
        rows = [tok(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts[i:i + batch_size]]
        b = collate(rows, tok.pad_token_id)
        h_ft = final_hidden(pair.finetuned, embed_ids(pair.finetuned, b["input_ids"]), b["attention_mask"])
        h_base = final_hidden(pair.base, embed_ids(pair.base, b["input_ids"]), b["attention_mask"])
        for r, ids in enumerate(rows):
            miner.add(heads[0](h_ft[r, : len(ids)]), heads[1](h_base[r, : len(ids)]))
    return miner


def write_mining(result: DiffMining, out: Path, title: str = "") -> list[Path]:
    """``diff_mining.json`` and the bar chart of the most-risen words."""
    out = Path(out)
    write_json(out / names.DIFF_MINING_FILE, result.as_dict())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    words = result.words[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(words) + 1.5))
    ax.barh([w.word for w in words], [w.count for w in words], color="#55a868")
    ax.set_xlabel(f"positions where the word's logit rose most (top {result.top_k}, by >= {result.min_diff})")
    ax.set_title(f"Diff mining{': ' + title if title else ''}")
    fig.tight_layout()
    with atomic_path(out / names.DIFF_MINING_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return [out / names.DIFF_MINING_FILE, out / names.DIFF_MINING_PNG]
