"""The evidence pipeline: what runs once the soft prompt is trained, in this order.

    hard_prompts ──> divergent_dataset ──> lens ──> compare ──> analysis ──> weights ──> findings ──> conditions ──> report
    (soft prompt,     (hard prompts,        (pair,    (pair,      (records)    (pair: the   (survey,      (findings,     (every file
     run texts)        run texts)            organism) categories)              update)      evidence)     leads)          of the run)

An audit (a run told no category) first runs :func:`survey` before the soft prompt is
trained: it scores every category and the broad probe set, mines the logit rises, and
picks the texts the soft prompt trains on. Its files in the run folder then stand in for
``compare`` (which is skipped) and feed ``findings``.

Every step is a plain function with typed settings in and typed results out, writing its
files atomically into the run folder (names from :mod:`finediff.names`). :func:`run`
calls them in :data:`STEPS` order and hands each what it needs from the steps before it,
in memory. With ``resume``, a step whose output is already in the run folder is read back
instead of recomputed, so an interrupted evidence phase picks up where it stopped. ``train.py``
(after fit) and the ``evaluate.py`` tasks call these same functions, one line each.

Modules by job: :mod:`~finediff.pipeline.settings` (the ``evidence`` settings of every
step, the :class:`Objective`, the :class:`RunTexts`), :mod:`~finediff.pipeline.steps`
(one function per step, and :func:`survey`) and :mod:`~finediff.pipeline.runner`
(:data:`STEPS` in order: :func:`run`, the :class:`Sink` it reports to).
"""

from finediff.pipeline.runner import Evidence, NullSink, Sink, run
from finediff.pipeline.settings import (STEPS, AnalysisSettings, AnswerSettings, CompareSettings, DatasetSettings,
                                        EvidenceSettings, HardPromptSettings, Objective, RunTexts,
                                        SoftPromptSettings)
from finediff.pipeline.steps import (analysis, compare, conditions, divergent_dataset, findings, hard_prompts, lens,
                                     organism_texts, report, survey, weights, write_lens)

__all__ = ["STEPS", "AnalysisSettings", "AnswerSettings", "CompareSettings", "DatasetSettings", "Evidence",
           "EvidenceSettings", "HardPromptSettings", "NullSink", "Objective", "RunTexts", "Sink", "SoftPromptSettings", "analysis", "compare",
           "conditions", "divergent_dataset", "findings", "hard_prompts", "lens", "organism_texts",
           "report", "run", "survey", "weights", "write_lens"]
