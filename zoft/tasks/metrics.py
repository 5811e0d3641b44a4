"""SQuAD-style answer metrics (docs/algorithms.md, "Evaluation"): normalisation, token F1 and exact match.

normalize: lower-case, delete ASCII punctuation, delete the whole words a / an / the, collapse whitespace.
F1 = 2PR/(P+R) over the multiset overlap of normalised tokens; when either side has no tokens, F1 is 1 if both
are empty and 0 otherwise. Scores against several gold answers take the maximum.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def best_f1(prediction: str, golds: Iterable[str]) -> float:
    return max(f1(prediction, g) for g in golds)


def best_exact_match(prediction: str, golds: Iterable[str]) -> float:
    return max(exact_match(prediction, g) for g in golds)
