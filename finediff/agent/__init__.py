"""The interpretability agent: an LLM investigates the pair with finediff's results as
tools and describes what the finetune changed; a grader scores the description.

``client`` (any OpenAI-compatible endpoint), ``tools`` (the run's evidence and ``ask``),
``loop`` (the investigation and its budgets), ``grader`` (1-5 against a card).
"""
