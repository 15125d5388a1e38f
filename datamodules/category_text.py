"""Lightning glue over :mod:`finediff.data`: category texts -> padded token batches."""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import lightning as L
from torch.utils.data import DataLoader

from finediff.data import check_category, collate, format_parts, load_category
from finediff.errors import FinediffError, check_number
from finediff.pipeline import RunTexts


class CategoryTextDataModule(L.LightningDataModule):
    """Streams category texts (``datasets``, streaming) and tokenizes them.

    Args:
        categories: category names (shipped files, JSONL paths or ``hub:`` specs).
        max_texts_per_category: texts taken from each category's stream.
        batch_size: texts per batch.
        max_length: texts are cut to their last ``max_length`` tokens.
        chat_template: wrap each text as a user turn when the tokenizer has a template.
        seed: seed of the train/validation split (:data:`~finediff.data.VAL_FRACTION` of each
            category held out); ``train.py`` passes the run's ``seed`` (never from the group).
        tokenizer: set by ``train.py`` from the model pair (never from config).

    Every argument is checked here, before any model loads: a bad one is a one-line error.
    """

    def __init__(
        self,
        categories: Optional[Sequence[str]] = None,
        max_texts_per_category: Optional[int] = 1000,
        batch_size: int = 4,
        max_length: int = 64,
        chat_template: bool = True,
        seed: int = 0,
        tokenizer=None,
    ):
        super().__init__()
        if categories is not None:
            if isinstance(categories, str) or not categories:
                raise FinediffError(f"data.categories must be a non-empty list or null, got {categories!r}")
            categories = [str(c) for c in categories]  # plain list: checkpoints load with weights_only
            for c in categories:
                check_category(c)
        check_number("data.batch_size", batch_size, int, minimum=1)
        check_number("data.max_length", max_length, int, minimum=2)
        if max_texts_per_category is not None:
            check_number("data.max_texts_per_category", max_texts_per_category, int, minimum=1)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self._texts = self._split() if categories is not None else None
        self._items: dict[str, list] = {}

    @property
    def audit(self) -> bool:
        """No category given: the run's texts come from the survey (:meth:`set_texts`)."""
        return self.hparams.categories is None

    def set_texts(self, train: list[str], val: list[str]) -> None:
        """Use these texts (an audit's highest-divergence survey texts)."""
        if not train or not val:
            raise FinediffError(f"the survey found {len(train)} training and {len(val)} held-out texts; "
                                "need at least one of each")
        hp = self.hparams
        self._texts, self._items = RunTexts(list(train), list(val), hp.max_length, hp.chat_template), {}

    def _split(self) -> RunTexts:
        """The texts, split into train and held-out (no tokenizer needed: checked at once)."""
        hp = self.hparams
        train, val = [], []
        for category in hp.categories:
            split = load_category(category, hp.max_texts_per_category, seed=hp.seed)
            train += split.train
            val += split.val
        if not val:
            raise FinediffError(f"no held-out texts in data.categories={list(hp.categories)}: every category has "
                                "a single text; give at least two texts, or more categories")
        return RunTexts(train, val, hp.max_length, hp.chat_template)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._items:
            return
        if self.tokenizer is None:
            raise RuntimeError("CategoryTextDataModule needs a tokenizer (train.py sets it)")
        texts_ = self.texts()
        self._items = {name: [format_parts(self.tokenizer, t, self.hparams.chat_template) for t in texts]
                       for name, texts in (("train", texts_.train), ("val", texts_.val))}

    def texts(self) -> RunTexts:
        """The run's train and held-out texts with their formatting settings."""
        if self._texts is None:
            raise FinediffError("data.categories is null (an audit) and no texts were set: train.py runs the survey "
                                "first")
        return self._texts

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._items[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id, max_length=self.hparams.max_length),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
