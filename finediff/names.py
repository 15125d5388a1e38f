"""One name, one place: every file name, metric key and record key that a producer
writes and a consumer reads is defined here and imported by both (a test scans every
module, the shells and the dashboard included, for copies)."""

# Run outputs (in ``paths.output_dir``).
SOFT_PROMPT_FILE = "soft_prompt.pt"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
INTERRUPTED_CKPT = "interrupted.ckpt"
"""What Lightning saves when a run stops (configs/callbacks/on_exception_checkpoint.yaml names it)."""
LAST_CKPT = "last.ckpt"
HARD_PROMPTS_FILE = "hard_prompts.jsonl"
DIVERGENT_DATASET_PT = "divergent_dataset.pt"
DIVERGENT_DATASET_JSONL = "divergent_dataset.jsonl"
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
HARD_PROMPT_EVAL_FILE = "hard_prompt_eval.json"
SOFT_PROMPT_MEAN_DIVERGENCE = "soft_prompt_mean_divergence"
"""In ``hard_prompt_eval.json`` (``task.run_dir`` given): the run's soft prompt on the same texts."""

# Metric keys (logged by the LightningModule, written to ``metrics.json``).
TRAIN_DIVERGENCE = "train/divergence"
VAL_DIVERGENCE = "val/divergence"
VAL_DIVERGENCE_NO_PROMPT = "val/divergence_no_prompt"
VAL_DIVERGENCE_RANDOM_PROMPT = "val/divergence_random_prompt"
TRAIN_BASE_SHIFT = "train/base_shift"
VAL_BASE_SHIFT = "val/base_shift"
"""How far the learned prompt moves the base model's own predictions: KL(base without || base with)."""
VAL_METRIC_KEYS = (VAL_DIVERGENCE, VAL_DIVERGENCE_NO_PROMPT, VAL_DIVERGENCE_RANDOM_PROMPT, VAL_BASE_SHIFT)
METRIC_WORDS = {
    VAL_DIVERGENCE: ("Disagreement with the soft prompt",
                     "Mean per-token KL(finetuned ‖ base) on held-out texts, with the learned soft prompt in front."),
    VAL_DIVERGENCE_NO_PROMPT: ("Disagreement without it",
                               "The same on the same texts with no prompt: how far the pair differs on its own."),
    VAL_DIVERGENCE_RANDOM_PROMPT: ("Disagreement with a random prompt",
                                   "The same with a random soft prompt of the same size: what any prompt does."),
    VAL_BASE_SHIFT: ("How far it moves the base",
                     "KL(base without ‖ base with the prompt): large means the prompt bends the base model itself."),
}
"""Each validation metric in words: a label and one line saying what it means (dashboard, report)."""
GLOBAL_STEP = "global_step"
WALL_TIME = "wall_time_s"
RUN_TIME = "run_time_s"
"""``metrics.json``: the whole run in seconds (survey, training and evidence; a resumed run: its own part)."""
INTERRUPTED = "interrupted"

# Per-record metrics of the divergent dataset (the seed's format) and their run means.
KL_DIVERGENCE = "kl_divergence"
TOKEN_DISAGREEMENT = "token_disagreement_rate"
VOCAB_JACCARD = "vocab_jaccard_similarity"
RECORD_METRICS = (KL_DIVERGENCE, TOKEN_DISAGREEMENT, VOCAB_JACCARD)
DIVERGENT_PREFIX = "divergent/"


def divergent_key(metric: str) -> str:
    """Logged key of a divergent-dataset mean, e.g. ``divergent/kl_divergence``."""
    return DIVERGENT_PREFIX + metric


# Shipped data.
CATEGORY_DIR = "data/categories"
CATEGORY_TEXT_FIELD = "text"
PROBES_FILE = "data/probes/everyday.jsonl"
PROBE_DOMAIN_FIELD = "domain"

# The audit: the survey that finds where the change is, diff mining, amplified samples,
# the tested findings.
SURVEY_TEXTS = "survey.jsonl"
SURVEY_GROUPS = "survey_groups.csv"
SURVEY_SUMMARY = "survey.json"
SURVEY_PNG = "survey.png"
SURVEY_ANSWERS = "survey_answers.jsonl"
"""The survey's answers made so far, batch by batch: what a run stopped during the survey goes on from."""
DIFF_MINING_FILE = "diff_mining.json"
DIFF_MINING_PNG = "diff_mining.png"
FINDINGS_FILE = "findings.json"
WEIGHTS_FILE = "weights.json"
"""What the finetune's weight update writes and reads (:mod:`finediff.weights`)."""
CONDITIONS_FILE = "conditions.json"
PHRASES_FILE = "phrases.json"
"""The conditions that turn a behaviour on (:mod:`finediff.conditions`)."""
PROMPT_EFFECT_FILE = "soft_prompt_effect.json"
"""Both models' answers with the soft prompt and without it, and what it did (:mod:`finediff.prompt_effect`)."""
"""The conditions that turn a behaviour on (:mod:`finediff.conditions`)."""

# Model organisms: adapter folder files and finetuning data files.
CARD_FILE = "card.json"
VERIFICATION_FILE = "verification.json"
ELICITATION_FILE = "elicitation.json"
ORGANISM_TRAIN_FILE = "train.jsonl"
ORGANISM_HELDOUT_FILE = "heldout.jsonl"

# Activation Difference Lens and diffing methods.
LENS_DIR = "lens"
LENS_SUMMARY = "lens.json"
LENS_NORM_PNG = "difference_norms.png"
LENS_RELEVANCE_PNG = "token_relevance.png"
DIFF_DIR = "diff"
DIFF_SUMMARY = "summary.json"
ACTIVATION_CACHE_DIR = "activation_cache"
CACHE_INDEX = "index.json"
KL_HIST_PNG = "kl_distribution.png"
NORMDIFF_PNG = "normdiff_by_layer.png"
SIDES = ("base", "finetuned")


def activation_key(side: str, layer: int) -> str:
    """Name of one model's residual stream after decoder layer ``layer`` (0-based) in an
    activation batch or cache shard, e.g. ``finetuned.layer14``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return f"{side}.layer{int(layer)}"


# Analysis of the divergent dataset and the report.
ANALYSIS_FILE = "divergence_analysis.json"
ANALYSIS_KL_PNG = "analysis_kl.png"
ANALYSIS_FIRST_PNG = "analysis_first_divergence.png"
CLUSTERS_FILE = "clusters.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# A multirun's table over its runs (in the sweep folder).
SWEEP_SUMMARY_MD = "sweep_summary.md"
SWEEP_SUMMARY_JSON = "sweep_summary.json"

# The interpretability agent (evaluate.py task=agent).
AGENT_TRANSCRIPT = "agent_transcript.json"
AGENT_BLACK_BOX_TRANSCRIPT = "agent_black_box_transcript.json"
AGENT_EVAL_FILE = "agent_eval.json"
AGENT_EVAL_MD = "agent_eval.md"
