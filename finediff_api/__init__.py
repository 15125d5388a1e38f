"""The seed framework's Python names, as thin faces over finediff's pipeline.

    from finediff_api import DivergenceTrainer, ModelPairManager

    manager = ModelPairManager(device="cpu")
    model_1, model_2, tokenizer = manager.load_model_pair(
        "embedded:smollm2", "embedded:smollm2", adapter="organisms/sandbagging")
    trainer = DivergenceTrainer(model_1=model_1, model_2=model_2, tokenizer=tokenizer,
                                config={"training": {"num_soft_prompt_tokens": 8, "max_steps": 20},
                                        "data": {"categories": ["capabilities"]}})
    trainer.train()
    dataset = trainer.generate_divergent_dataset(output_file="out/divergent_dataset.pt")

``DivergenceAnalyzer`` and ``BehavioralClusteringAnalyzer`` are the core's own classes;
``ModelPairManager`` loads with the core's ``load_model_pair``; ``DivergenceTrainer``
trains with the same LightningModule as ``train.py`` and generates with the same pipeline
steps; ``ExperimentTracker`` wraps the same Lightning loggers. This package may use
Lightning; ``finediff/`` never does.
"""

from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer
from finediff_api.manager import ModelPairManager
from finediff_api.tracking import ExperimentTracker
from finediff_api.trainer import DivergenceTrainer

__all__ = ["BehavioralClusteringAnalyzer", "DivergenceAnalyzer", "DivergenceTrainer", "ExperimentTracker",
           "ModelPairManager"]
