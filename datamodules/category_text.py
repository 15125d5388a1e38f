"""Lightning glue over :mod:`finediff.data`: category texts -> padded token batches."""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from finediff.data import collate, format_parts, load_category


class _Tokenized(Dataset):
    def __init__(self, items: list[tuple[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i][1]


class CategoryTextDataModule(L.LightningDataModule):
    """Streams category texts (``datasets``, streaming) and tokenizes them.

    Args:
        categories: category names (shipped files, JSONL paths or ``hub:`` specs).
        max_texts_per_category: texts taken from each category's stream.
        batch_size: texts per batch.
        val_fraction: share of each category held out for validation.
        max_length: texts are cut to their last ``max_length`` tokens.
        chat_template: wrap each text as a user turn when the tokenizer has a template.
        seed: seed of the train/validation split.
        num_workers: DataLoader workers.
        tokenizer: set by ``train.py`` from the model pair (never from config).
    """

    def __init__(
        self,
        categories: Sequence[str] = ("sandbagging",),
        max_texts_per_category: Optional[int] = 1000,
        batch_size: int = 4,
        val_fraction: float = 0.2,
        max_length: int = 64,
        chat_template: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer=None,
    ):
        super().__init__()
        categories = [str(c) for c in categories]  # plain list: checkpoints load with weights_only
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.train_set: Optional[_Tokenized] = None
        self.val_set: Optional[_Tokenized] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise RuntimeError("CategoryTextDataModule needs a tokenizer (train.py sets it)")
        hp = self.hparams
        train, val = [], []
        for category in hp.categories:
            split = load_category(category, hp.max_texts_per_category, hp.val_fraction, hp.seed)
            train += [(t, format_parts(self.tokenizer, t, hp.chat_template)) for t in split.train]
            val += [(t, format_parts(self.tokenizer, t, hp.chat_template)) for t in split.val]
        self.train_set, self.val_set = _Tokenized(train), _Tokenized(val or train)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id, max_length=self.hparams.max_length),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
