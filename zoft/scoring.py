"""Candidate scoring for classification and multiple choice (ALGORITHMS.md §8.3, §8.4).

Each example expands into one row per candidate: prompt + candidate. The candidate's tokens are the last
`option_len = len(tok(prompt + cand)) − len(tok(prompt))` tokens of the row (computed by difference, as in the
MeZO code, so merges across the boundary are counted right). The score of a candidate is the **mean**
log-probability of its option tokens under teacher forcing; training minimises cross-entropy over the candidates'
scores, evaluation predicts the argmax.

Rows are left-padded, so every row's options end at the last position: the model only has to produce logits for
the last K+1 positions (K = longest option). With `logits_to_keep` this avoids a batch × length × vocabulary
logits tensor (16 × 2 rows × 64 tokens × 49 152 vocabulary × 4 B = 400 MB for SmolLM2) and its log-softmax.

Single-token candidates share one row. When every candidate of an example is one token after the same prompt
tokens (SST-2's " terrible"/" great", RTE's "Yes"/"No", ...), the C rows of that example differ only in their
last token, and all C scores are read from the next-token distribution at the end of the prompt: one row of
prompt length instead of C rows, i.e. half the forward work for a two-way task. `collate` takes this path when it
holds for every example of the batch; the scores equal the one-row-per-candidate ones up to float rounding.
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
    candidate_tokens: torch.Tensor | None = None  # [N, C] shared-prompt path: each candidate's one token (−1: none)


def shares_prompt(example: Encoded) -> bool:
    """Every candidate is a single token after the same prompt tokens, so one row scores them all."""
    return all(n == 1 for n in example.option_lens) and len({r[:-1] for r in example.rows}) == 1


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, positions) of rows left-padded to the longest one (not to a fixed length)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    # positions count real tokens only, so a left-padded row is positioned exactly like an unpadded one
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def collate(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu",
            share: bool = True) -> Batch:
    """Left-pad the batch's rows on `device`: one row per example when every example `shares_prompt` (and
    `share`), else one row per candidate."""
    labels = torch.tensor([e.label for e in encoded], device=device)
    num_candidates = max(len(e.rows) for e in encoded)
    if share and all(shares_prompt(e) for e in encoded):
        ids, mask, positions = _left_pad([e.rows[0][:-1] for e in encoded], pad_id)
        cand = torch.full((len(encoded), num_candidates), -1, dtype=torch.long)
        for i, e in enumerate(encoded):
            cand[i, :len(e.rows)] = torch.tensor([r[-1] for r in e.rows])
        n = len(encoded)
        empty = torch.zeros((n, 0), dtype=torch.long, device=device)
        return Batch(ids.to(device), mask.to(device), positions.to(device), empty, empty.float(),
                     torch.arange(n, device=device), torch.zeros(n, dtype=torch.long, device=device), labels,
                     num_candidates, cand.to(device))
    rows = [r for e in encoded for r in e.rows]
    opt_lens = [o for e in encoded for o in e.option_lens]
    k = max(opt_lens)
    ids, mask, positions = _left_pad(rows, pad_id)
    width = ids.shape[1]
    target_mask = (torch.arange(k).unsqueeze(0) >= k - torch.tensor(opt_lens).unsqueeze(1)).float()
    row_ex = torch.tensor([i for i, e in enumerate(encoded) for _ in e.rows])
    row_cand = torch.tensor([j for e in encoded for j in range(len(e.rows))])
    return Batch(ids.to(device), mask.to(device), positions.to(device), ids[:, width - k:].to(device),
                 target_mask.to(device), row_ex.to(device), row_cand.to(device), labels, num_candidates)


def _forward_kwargs(model) -> set[str]:
    cached = getattr(model, "_zoft_forward_kwargs", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        model._zoft_forward_kwargs = cached
    return cached


def candidate_scores(model, batch: Batch) -> torch.Tensor:
    """[N, C] mean option log-prob of every candidate (−inf where an example has fewer candidates)."""
    shared = batch.candidate_tokens is not None
    k = batch.targets.shape[1]
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    accepted = _forward_kwargs(model)
    if "position_ids" in accepted:
        kwargs["position_ids"] = batch.position_ids
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1 if shared else k + 1
    if shared:  # the next-token distribution after the prompt scores every single-token candidate
        logp = F.log_softmax(model(**kwargs).logits[:, -1].float(), dim=-1)
        cand = batch.candidate_tokens
        scores = logp.gather(1, cand.clamp(min=0))
        return scores.masked_fill(cand < 0, float("-inf"))
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
