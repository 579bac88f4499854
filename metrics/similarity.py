"""Sentence-embedding similarity on the bundled all-MiniLM-L6-v2 (meaning preservation, diversity, pair
selection). Offline, CPU, loaded once per process.

    embed(texts)                          -> (n, 384) float32, unit-length rows
    cosine(a_texts, b_texts)              -> [cos(a_i, b_i)]
    meaning_preservation(inputs, outputs) -> [cos(input_i, output_i)]
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

EMBEDDER = "all-minilm-l6-v2"

_model: Any = None
_lock = threading.Lock()


def load_embedder() -> Any:
    """The bundled all-MiniLM-L6-v2 as a `SentenceTransformer` on CPU; pulled on first use, cached per process."""
    global _model
    with _lock:
        if _model is None:
            from sentence_transformers import SentenceTransformer

            from programs import models

            _model = SentenceTransformer(str(models.path(EMBEDDER, quiet=True)), device="cpu")
            _model.eval()
        return _model


def embed(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text (float32; shape (0, dim) for no texts)."""
    model = load_embedder()
    if not texts:
        # sentence-transformers 6 renamed get_sentence_embedding_dimension to get_embedding_dimension
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def cosine(a_texts: Sequence[str], b_texts: Sequence[str]) -> list[float]:
    """Cosine similarity of each a_i with its b_i (equal lengths), in one encoding pass."""
    if len(a_texts) != len(b_texts):
        raise ValueError(f"cosine needs equal lengths, got {len(a_texts)} and {len(b_texts)}")
    if not a_texts:
        return []
    vectors = embed([*a_texts, *b_texts])
    a, b = vectors[: len(a_texts)], vectors[len(a_texts) :]
    return [float(x) for x in np.clip((a * b).sum(axis=1), -1.0, 1.0)]


def meaning_preservation(inputs: Sequence[str], outputs: Sequence[str]) -> list[float]:
    """How much of each input's meaning its output keeps: cosine of their embeddings (1 = same meaning)."""
    return cosine(inputs, outputs)
