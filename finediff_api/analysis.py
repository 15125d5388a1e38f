"""``from finediff_api.analysis import DivergenceAnalyzer, BehavioralClusteringAnalyzer`` (the seed's path)."""

from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer

__all__ = ["BehavioralClusteringAnalyzer", "DivergenceAnalyzer"]
