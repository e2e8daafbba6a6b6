"""Generation metrics as the upstream demo computes them (glm4-reference.md §1.6, §7.17).

Texts are decoded with special tokens skipped (upstream keeps them, which pads the scores with
``<|user|>``/``<|endoftext|>`` strings; we document the difference), segmented with jieba, then
scored with rouge-chinese (ROUGE-1/2/L F x 100) and nltk's sentence BLEU-4 with smoothing method 3
(a 0-1 fraction, as upstream). Scores are averaged per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(logging.WARNING)

METRIC_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def score_texts(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L (x100) and BLEU-4 (0-1) over prediction/reference pairs."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    rouge = Rouge()
    smoothing = SmoothingFunction().method3
    for prediction, reference in zip(predictions, references, strict=True):
        pred_tokens = list(jieba.cut(prediction.strip()))
        ref_tokens = list(jieba.cut(reference.strip()))
        if pred_tokens and ref_tokens and " ".join(pred_tokens).strip():
            scores = rouge.get_scores(" ".join(pred_tokens), " ".join(ref_tokens))[0]
            for key in ("rouge-1", "rouge-2", "rouge-l"):
                totals[key] += round(scores[key]["f"] * 100, 4)
            totals["bleu-4"] += sentence_bleu(
                [ref_tokens], pred_tokens, smoothing_function=smoothing
            )
        # an empty prediction scores 0 everywhere (rouge_chinese raises on it)
    count = max(len(predictions), 1)
    return {key: value / count for key, value in totals.items()}
