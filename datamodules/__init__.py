from datamodules.category_text import CategoryTextDataModule

__all__ = ["CategoryTextDataModule"]
