"""From a soft prompt to hard prompts: readable token sequences that keep its effect.

Every method optimises the same objective as the soft prompt, evaluated exactly on token
ids: the pair's mean divergence at the text positions when the prompt starts the user's
message, minus :data:`FLUENCY_WEIGHT` times the base model's mean negative log-likelihood of
the prompt (its log-perplexity, given the chat header), so results read as language.

* :func:`project` -- nearest allowed token to each soft-prompt vector by cosine (baseline);
* :func:`guided` -- readable tokens that follow what training added to the prompt: left
  to right, among the base model's likeliest next tokens, the one whose embedding points
  most along that vector's displacement from where it started;
* :func:`pez` -- PEZ: keep continuous embeddings, project them to the nearest tokens
  every step, take the gradient at the projection and apply it to the continuous ones;
* ``text`` -- the best natural-language start among the highest-divergence texts (their
  first tokens);
* :func:`gcg` -- GCG-style coordinate search: the gradient with respect to one-hot tokens
  ranks ``top_k`` swaps per position among the tokens the base model finds likely there
  (AutoDAN-style fluent candidates), ``n_candidates`` single swaps are evaluated exactly
  with the current prompt on part of the training texts, and the best is kept only if it
  improves the objective there; the result must beat its start on all training texts (the
  objective is measured, never trusted from the gradient). On the answer objective it can
  score every prompt over the answers given with it in place (on-policy), and a
  perplexity budget ranks prompts the base model reads within it first.

Many prompts are scored at once by :func:`prompt_divergences`, which runs each text's
chat header once and continues it with every prompt from its key/value cache.

Tokens are restricted to an allowed vocabulary (printable, no special or control tokens).

Modules by job: :mod:`~finediff.hard_prompts.records` (the :class:`HardPrompt` record and
``hard_prompts.jsonl``), :mod:`~finediff.hard_prompts.scoring` (the exact objective: many
prompts at once, perplexity, allowed and fluent tokens), :mod:`~finediff.hard_prompts.derive`
(projection, guided, PEZ: prompts derived from the soft prompt),
:mod:`~finediff.hard_prompts.gcg_search` (GCG, its budget walk and bridging tokens) and
:mod:`~finediff.hard_prompts.search` (:func:`find_hard_prompts`, which runs them all).
"""

from finediff.hard_prompts.derive import DERIVED, guided, pez, project
from finediff.hard_prompts.gcg_search import GCGSettings, bridging_tokens, gcg
from finediff.hard_prompts.records import HardPrompt, read_hard_prompts
from finediff.hard_prompts.scoring import (FLUENCY_WEIGHT, allowed_tokens, answered, batches_divergence, evaluate,
                                           fluent_tokens, prompt_divergences, prompt_nll, prompt_objectives, token_nlls)
from finediff.hard_prompts.search import (BATCH_SIZE, EVAL_BATCHES, INIT_TEXTS, INIT_TOKENS, METHODS, N_STARTS,
                                          TRAIN_BATCHES, WALK_BRIDGING, WALK_FLUENT_TOP, WALK_N_CANDIDATES,
                                          HardPromptSettings, find_hard_prompts, text_prompt_ids)

__all__ = ["BATCH_SIZE", "DERIVED", "EVAL_BATCHES", "FLUENCY_WEIGHT", "GCGSettings", "INIT_TEXTS", "INIT_TOKENS",
           "METHODS", "N_STARTS", "TRAIN_BATCHES", "WALK_BRIDGING", "WALK_FLUENT_TOP", "WALK_N_CANDIDATES",
           "HardPrompt", "HardPromptSettings", "allowed_tokens", "answered", "batches_divergence", "bridging_tokens",
           "evaluate", "find_hard_prompts", "fluent_tokens", "gcg", "guided", "pez", "project", "prompt_divergences",
           "prompt_nll", "prompt_objectives", "read_hard_prompts", "text_prompt_ids", "token_nlls"]
