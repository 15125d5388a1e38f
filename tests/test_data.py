"""Category texts: shipped files, validation errors, deterministic splits, batching."""

from __future__ import annotations

import json

import pytest

from finediff.data import collate, format_text, known_categories, load_category, validate_jsonl
from finediff.errors import FinediffError

SEED_CATEGORIES = ["persona", "ethics", "capabilities", "sandbagging", "unlearning", "general"]


def test_shipped_categories_have_100_varied_texts():
    assert set(SEED_CATEGORIES) <= set(known_categories())
    for cat in known_categories():
        texts = load_category(cat, val_fraction=0.0).train
        assert len(texts) >= 100, cat
        assert len(set(texts)) == len(texts), f"duplicates in {cat}"
        openings = {" ".join(t.lower().split()[:3]) for t in texts}
        assert len(openings) >= 0.4 * len(texts), f"{cat} texts start too alike"
        lengths = [len(t.split()) for t in texts]
        assert max(lengths) >= 3 * min(lengths), f"{cat} texts are all one length"


def test_unknown_category_names_the_known_ones():
    with pytest.raises(FinediffError, match=r"unknown category 'nope'; known: .*sandbagging"):
        load_category("nope")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(FinediffError, match=r"bad.jsonl:2: malformed JSON"):
        load_category(str(path))
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"txt": "x"}) + "\n")
    with pytest.raises(FinediffError, match=r"bad.jsonl:2: expected an object"):
        validate_jsonl(path)


def test_split_is_deterministic_and_disjoint(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"text number {i}"}) + "\n" for i in range(50)))
    a, b = load_category(str(path), seed=1), load_category(str(path), seed=1)
    c = load_category(str(path), seed=2)
    assert a.train == b.train and a.val == b.val and a.val != c.val
    assert len(a.val) == 10 and not set(a.val) & set(a.train)
    assert len(load_category(str(path), max_texts=20).train) == 16


def test_chat_template_and_padding(tiny_pair):
    tok = tiny_pair.tokenizer
    ids = format_text(tok, "hello")
    assert tok.decode(ids).startswith("<|im_start|>user\nhello<|im_end|>")
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    batch = collate([[1, 2, 3], [4, 5]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert collate([[1, 2, 3, 4]], 0, max_length=2)["input_ids"].tolist() == [[3, 4]]


def test_hub_spec_without_network_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FinediffError, match=r"cannot stream hub dataset 'hub:no-such-org/no-such-data'"):
        load_category("hub:no-such-org/no-such-data", max_texts=3)
