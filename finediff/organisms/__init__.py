"""Model organisms: narrow LoRA finetunes of the embedded base whose change is known.

Each organism has a data generator (on-target examples from templates, off-target prompts
answered by the base itself), a card and a deterministic behaviour checker.
"""
