"""End-of-fit Activation Difference Lens: ``lens/lens.json`` + plots (names in :mod:`finediff.names`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import lightning as L

from finediff import names
from finediff.data import load_category, take, stream_texts
from finediff.io import write_json
from finediff.lens import DEFAULT_STRENGTHS, LensConfig, run_lens
from finediff.plots import lens_norms, lens_relevance

log = logging.getLogger(__name__)


def organism_rows(organism: Optional[dict]) -> tuple[list[str], list[dict]]:
    """``(finetuning texts of the target split, held-out off-target rows)`` of an organism config."""
    if not organism:
        return [], []
    folder = Path(organism["data"])
    train = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines() if x.strip()]
    heldout = [json.loads(x) for x in (folder / "heldout.jsonl").read_text().splitlines() if x.strip()]
    texts = [f"{r['prompt']} {r['response']}" for r in train if r["split"] == "target"]
    return texts, [r for r in heldout if r["split"] == "off_target"]


def lens_report(pair, generic: str, organism: Optional[dict], config: LensConfig, n_steer_prompts: int = 12,
                steer_category: str = "general", progress: bool = True) -> dict:
    """Run ADL; with an organism, score relevance against its finetuning data and the
    behaviour rate of steered vs unsteered samples on its held-out off-target prompts."""
    from finediff.organisms.checkers import CHECKERS

    generic_texts = take(stream_texts(generic), config.max_texts)
    ft_texts, off_rows = organism_rows(organism)
    # Steer where the organism does not already show its behaviour: its held-out off-target
    # chat prompts, else its held-out off-target documents (continued as plain text), else
    # a general category's prompts.
    chat_rows = [r for r in off_rows if r.get("chat", True)][:n_steer_prompts]
    doc_rows = [r for r in off_rows if not r.get("chat", True)][:n_steer_prompts]
    rows = (chat_rows or doc_rows
            or [{"prompt": t} for t in load_category(steer_category, n_steer_prompts, 0.0).train])
    summary = run_lens(pair, generic_texts, [r["prompt"] for r in rows], config, ft_texts or None, progress,
                       steer_chat=[r.get("chat", True) for r in rows])
    summary["generic"] = generic
    if organism:
        checker = CHECKERS[organism["checker"]]
        summary["organism"] = organism["name"]
        for entry in summary["layers"].values():
            st = entry["steering"]
            st["unsteered_behaviour_rate"] = sum(checker(g, r) for g, r in zip(st["unsteered"], rows)) / len(rows)
            st["steered_behaviour_rate"] = sum(checker(g, r) for g, r in zip(st["steered"], rows)) / len(rows)
    return summary


def write_lens(summary: dict, folder: Path) -> list[Path]:
    write_json(folder / names.LENS_SUMMARY, summary)
    return [lens_norms(summary, folder / names.LENS_NORM_PNG), lens_relevance(summary, folder / names.LENS_RELEVANCE_PNG)]


class ActivationLensCallback(L.Callback):
    """Run the Activation Difference Lens at the end of fit.

    Args:
        output_dir: the run's output folder (results go to ``<output_dir>/lens/``).
        generic: category spec of the generic text (shipped corpus by default, or ``hub:...``).
        organism: the ``organism`` config (name, data, checker) or None.
        layers / n_positions / max_texts / ...: see :class:`finediff.lens.LensConfig`.
    """

    def __init__(self, output_dir: str, generic: str, organism: Optional[dict] = None, layers=(0.5,),
                 n_positions: int = 5, max_texts: int = 1000, top_k: int = 20, steering_tokens: int = 48,
                 coherence_factor: float = 2.0, n_steer_prompts: int = 12, strengths=DEFAULT_STRENGTHS):
        self.output_dir = Path(output_dir) / names.LENS_DIR
        self.generic, self.organism, self.n_steer = generic, dict(organism) if organism else None, n_steer_prompts
        self.config = LensConfig(layers=list(layers), n_positions=n_positions, max_texts=max_texts, top_k=top_k,
                                 steering_tokens=steering_tokens, coherence_factor=coherence_factor,
                                 strengths=tuple(strengths))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = lens_report(pl_module.pair, self.generic, self.organism, self.config, self.n_steer)
        pngs = write_lens(summary, self.output_dir)
        for layer, entry in summary["layers"].items():
            log.info("ADL layer %s relevance %s steering %s", layer, entry["relevance_max_over_positions"],
                     {k: entry["steering"].get(k) for k in ("chosen_strength", "steered_behaviour_rate",
                                                           "unsteered_behaviour_rate")})
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image("lens", images=[str(p) for p in pngs])
