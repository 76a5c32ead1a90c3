"""TF-IDF + k nearest neighbours, the core of the learned single-shot baselines (RouteLLM's and
LLMRouter's kNN routers): a new task's labels (every model's score and cost, see
evaluation/baselines.py) are the similarity-weighted means over its k nearest train tasks.
Plain numpy: no model download, deterministic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class TfidfKNN:
    def __init__(self, k: int = 10, max_features: int = 5000):
        self.k, self.max_features = k, max_features

    def fit(self, texts: Sequence[str], labels: Sequence[float]) -> "TfidfKNN":
        if not texts:
            raise ValueError("the kNN baseline needs train tasks")
        df = Counter(w for t in texts for w in set(_words(t)))
        vocab = [w for w, _ in df.most_common(self.max_features)]
        self.index = {w: i for i, w in enumerate(vocab)}
        n = len(texts)
        self.idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in vocab])
        self.X = self._vec(texts)
        self.y = np.asarray(labels, dtype=float)
        return self

    def _vec(self, texts: Sequence[str]) -> np.ndarray:
        X = np.zeros((len(texts), len(self.index)))
        for r, t in enumerate(texts):
            for w, c in Counter(_words(t)).items():
                j = self.index.get(w)
                if j is not None:
                    X[r, j] = c
        X *= self.idf
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norms > 0, norms, 1.0)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Similarity-weighted mean of the k nearest train tasks' labels: (n,) for one label
        per task, (n, outputs) for several (every model's score and cost)."""
        S = self._vec(texts) @ self.X.T
        k = min(self.k, S.shape[1])
        idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
        w = np.take_along_axis(S, idx, axis=1) + 1e-6
        y = self.y[idx]  # (n, k) or (n, k, outputs)
        if y.ndim == 3:
            return (w[..., None] * y).sum(axis=1) / w.sum(axis=1, keepdims=True)
        return (w * y).sum(axis=1) / w.sum(axis=1)

    predict_proba = predict  # one label in [0, 1]: a probability
