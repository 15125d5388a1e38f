"""One name, one place: every file name and metric key that a producer writes and a
consumer reads is defined here and imported by both."""

# Run outputs (in ``paths.output_dir``).
SOFT_PROMPT_FILE = "soft_prompt.pt"
METRICS_FILE = "metrics.json"
HPARAMS_FILE = "config.yaml"
HARD_PROMPTS_FILE = "hard_prompts.jsonl"
DIVERGENT_DATASET_PT = "divergent_dataset.pt"
DIVERGENT_DATASET_JSONL = "divergent_dataset.jsonl"
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
HARD_PROMPT_EVAL_FILE = "hard_prompt_eval.json"

# Metric keys (logged by the LightningModule, written to ``metrics.json``).
TRAIN_DIVERGENCE = "train/divergence"
TRAIN_LOSS = "train/loss"
VAL_DIVERGENCE = "val/divergence"
VAL_DIVERGENCE_NO_PROMPT = "val/divergence_no_prompt"
VAL_DIVERGENCE_RANDOM_PROMPT = "val/divergence_random_prompt"
VAL_METRIC_KEYS = (VAL_DIVERGENCE, VAL_DIVERGENCE_NO_PROMPT, VAL_DIVERGENCE_RANDOM_PROMPT)

# Shipped data.
CATEGORY_DIR = "data/categories"
CATEGORY_TEXT_FIELD = "text"

# Activation Difference Lens and diffing methods.
LENS_DIR = "lens"
LENS_SUMMARY = "lens.json"
LENS_NORM_PNG = "difference_norms.png"
LENS_RELEVANCE_PNG = "token_relevance.png"
DIFF_DIR = "diff"
DIFF_SUMMARY = "summary.json"
ACTIVATION_CACHE_DIR = "activation_cache"
KL_HIST_PNG = "kl_distribution.png"
NORMDIFF_PNG = "normdiff_by_layer.png"

# Analysis of the divergent dataset.
ANALYSIS_FILE = "divergence_analysis.json"
ANALYSIS_KL_PNG = "analysis_kl.png"
ANALYSIS_FIRST_PNG = "analysis_first_divergence.png"
CLUSTERS_FILE = "clusters.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
