from lightning_modules.soft_prompt_divergence import SoftPromptDivergence

__all__ = ["SoftPromptDivergence"]
