"""Analysis of a divergent dataset: what diverged, where, and which behaviours."""

from finediff.analysis.clustering import BehavioralClusteringAnalyzer
from finediff.analysis.divergence import DivergenceAnalyzer

__all__ = ["BehavioralClusteringAnalyzer", "DivergenceAnalyzer"]
