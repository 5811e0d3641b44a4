"""Candidate scoring for classification and multiple choice (ALGORITHMS.md §8.3, §8.4).

Each example expands into one row per candidate: prompt + candidate. The candidate's tokens are the last
`option_len = len(tok(prompt + cand)) − len(tok(prompt))` tokens of the row (computed by difference, as in the
MeZO code, so merges across the boundary are counted right). The score of a candidate is the **mean**
log-probability of its option tokens under teacher forcing; training minimises cross-entropy over the candidates'
scores, evaluation predicts the argmax.

Rows are left-padded, so every row's options end at the last position: the model only has to produce logits for
the last K+1 positions (K = longest option). With `logits_to_keep` this avoids a batch × length × vocabulary
logits tensor (16 × 2 rows × 64 tokens × 49 152 vocabulary × 4 B = 400 MB for SmolLM2) and its log-softmax.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoft.tasks import Example


@dataclass(frozen=True)
class Encoded:
    """One example tokenised: a token list per candidate, each candidate's option length, and the gold index."""

    rows: tuple[tuple[int, ...], ...]
    option_lens: tuple[int, ...]
    label: int


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int = 2048) -> list[Encoded]:
    """Tokenise every (prompt, candidate) pair once, with left truncation that keeps BOS."""
    out = []
    bos = tokenizer.bos_token_id
    for ex in examples:
        prompt_ids = tokenizer(ex.prompt).input_ids
        rows, lens = [], []
        for cand in ex.candidates:
            ids = tokenizer(ex.prompt + cand).input_ids
            option_len = len(ids) - len(prompt_ids)
            if option_len < 1:
                raise ValueError(f"candidate {cand!r} adds no token to prompt {ex.prompt[-40:]!r}")
            if len(ids) > max_length:  # drop from the left, keeping a leading BOS
                keep_bos = bos is not None and ids[0] == bos
                ids = ids[:1] + ids[len(ids) - max_length + 1:] if keep_bos else ids[len(ids) - max_length:]
                option_len = min(option_len, len(ids) - 1)
            rows.append(tuple(ids))
            lens.append(option_len)
        out.append(Encoded(tuple(rows), tuple(lens), ex.label))
    return out


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return tid
    return 0


@dataclass
class Batch:
    """A collated batch: rows left-padded; `targets`/`target_mask` cover the last K positions of each row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor          # [R, K] token ids the last K positions hold
    target_mask: torch.Tensor      # [R, K] 1 on option tokens
    row_example: torch.Tensor      # [R] example index of each row
    row_candidate: torch.Tensor    # [R] candidate index of each row
    labels: torch.Tensor           # [N] gold candidate per example
    num_candidates: int            # max candidates per example


def collate(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Left-pad all candidate rows of `encoded` into one batch on `device`."""
    rows = [r for e in encoded for r in e.rows]
    opt_lens = [o for e in encoded for o in e.option_lens]
    width = max(len(r) for r in rows)
    k = max(opt_lens)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    # positions count real tokens only, so a left-padded row is positioned exactly like an unpadded one
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    target_mask = (torch.arange(k).unsqueeze(0) >= k - torch.tensor(opt_lens).unsqueeze(1)).float()
    row_ex = torch.tensor([i for i, e in enumerate(encoded) for _ in e.rows])
    row_cand = torch.tensor([j for e in encoded for j in range(len(e.rows))])
    return Batch(ids.to(device), mask.to(device), positions.to(device), ids[:, width - k:].to(device),
                 target_mask.to(device), row_ex.to(device), row_cand.to(device),
                 torch.tensor([e.label for e in encoded], device=device),
                 max(len(e.rows) for e in encoded))


def _forward_kwargs(model) -> set[str]:
    cached = getattr(model, "_zoft_forward_kwargs", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        model._zoft_forward_kwargs = cached
    return cached


def candidate_scores(model, batch: Batch) -> torch.Tensor:
    """[N, C] mean option log-prob of every candidate (−inf where an example has fewer candidates)."""
    k = batch.targets.shape[1]
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    accepted = _forward_kwargs(model)
    if "position_ids" in accepted:
        kwargs["position_ids"] = batch.position_ids
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = k + 1
    logits = model(**kwargs).logits[:, -(k + 1):-1]  # position t predicts token t+1
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    row_scores = (logp * batch.target_mask).sum(1) / batch.target_mask.sum(1)
    scores = torch.full((len(batch.labels), batch.num_candidates), float("-inf"), device=row_scores.device)
    scores[batch.row_example, batch.row_candidate] = row_scores
    return scores


def classification_loss(model, batches: Sequence[Batch]) -> torch.Tensor:
    """Cross-entropy over candidate scores, example-weighted over micro-batches (exact ZO accumulation, §1.8)."""
    total, count = None, 0
    for b in batches:
        loss = F.cross_entropy(candidate_scores(model, b), b.labels, reduction="sum")
        total = loss if total is None else total + loss
        count += len(b.labels)
    return total / count


@torch.inference_mode()
def evaluate(model, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 16,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy (argmax mean option log-prob, no calibration) and mean CE loss over `encoded`."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    # longest first: similar lengths share a batch, so little padding is computed
    order = sorted(range(len(encoded)), key=lambda i: -max(len(r) for r in encoded[i].rows))
    for start in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[start:start + batch_size]]
        batch = collate(chunk, pad_id, device)
        scores = candidate_scores(model, batch)
        correct += int((scores.argmax(1) == batch.labels).sum())
        loss_sum += float(F.cross_entropy(scores, batch.labels, reduction="sum"))
    model.train(was_training)
    n = max(len(encoded), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_examples": len(encoded)}
