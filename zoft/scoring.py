"""Candidate scoring for classification and multiple choice (docs/algorithms.md, "Training objective" and "Evaluation").

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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoft.encoding import Encoded, forward_kwargs, left_pad
# re-exported: callers tokenise and pad through zoft.scoring
from zoft.encoding import encode_examples as encode_examples, fit_length as fit_length, pad_id as pad_id
from zoft.generate import generation_metrics


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


def collate(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu",
            share: bool = True) -> Batch:
    """Left-pad the batch's rows on `device`: one row per example when every example `shares_prompt` (and
    `share`), else one row per candidate."""
    labels = torch.tensor([e.label for e in encoded], device=device)
    num_candidates = max(len(e.rows) for e in encoded)
    if share and all(shares_prompt(e) for e in encoded):
        ids, mask, positions = left_pad([e.rows[0][:-1] for e in encoded], pad_id)
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
    ids, mask, positions = left_pad(rows, pad_id)
    width = ids.shape[1]
    target_mask = (torch.arange(k).unsqueeze(0) >= k - torch.tensor(opt_lens).unsqueeze(1)).float()
    row_ex = torch.tensor([i for i, e in enumerate(encoded) for _ in e.rows])
    row_cand = torch.tensor([j for e in encoded for j in range(len(e.rows))])
    return Batch(ids.to(device), mask.to(device), positions.to(device), ids[:, width - k:].to(device),
                 target_mask.to(device), row_ex.to(device), row_cand.to(device), labels, num_candidates)


def _model_kwargs(model, batch: Batch, keep: int) -> dict:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    accepted = forward_kwargs(model)
    if "position_ids" in accepted:
        kwargs["position_ids"] = batch.position_ids
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = keep
    return kwargs


def _option_logprobs(model, kwargs: dict, batch: Batch) -> torch.Tensor:
    """[R, K] log-prob of each of the last K tokens of every row (zero where `target_mask` is 0 is not applied)."""
    k = batch.targets.shape[1]
    logits = model(**kwargs).logits[:, -(k + 1):-1]  # position t predicts token t+1
    return F.log_softmax(logits.float(), dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)


def gold_token_nll(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood, token count) of the option tokens of a batch of gold rows."""
    logp = _option_logprobs(model, _model_kwargs(model, batch, batch.targets.shape[1] + 1), batch)
    return -(logp * batch.target_mask).sum(), int(batch.target_mask.sum())


def lm_loss_parts(model, batches: Sequence[Batch]) -> tuple[torch.Tensor, int]:
    """(summed token NLL, token count) of the gold continuations over micro-batches."""
    total, count = None, 0
    for b in batches:
        nll, n = gold_token_nll(model, b)
        total = nll if total is None else total + nll
        count += n
    return total, count


def lm_loss(model, batches: Sequence[Batch]) -> torch.Tensor:
    """Token-level cross-entropy on the gold continuation (COPA, ReCoRD, SQuAD, DROP; docs/algorithms.md, "Training
    objective"), token-weighted over micro-batches so accumulation equals one big batch."""
    total, count = lm_loss_parts(model, batches)
    return total / max(count, 1)


def candidate_scores(model, batch: Batch) -> torch.Tensor:
    """[N, C] mean option log-prob of every candidate (−inf where an example has fewer candidates)."""
    shared = batch.candidate_tokens is not None
    kwargs = _model_kwargs(model, batch, 1 if shared else batch.targets.shape[1] + 1)
    if shared:  # the next-token distribution after the prompt scores every single-token candidate
        logp = F.log_softmax(model(**kwargs).logits[:, -1].float(), dim=-1)
        cand = batch.candidate_tokens
        scores = logp.gather(1, cand.clamp(min=0))
        return scores.masked_fill(cand < 0, float("-inf"))
    logp = _option_logprobs(model, kwargs, batch)
    row_scores = (logp * batch.target_mask).sum(1) / batch.target_mask.sum(1)
    scores = torch.full((len(batch.labels), batch.num_candidates), float("-inf"), device=row_scores.device)
    scores[batch.row_example, batch.row_candidate] = row_scores
    return scores


def classification_loss_parts(model, batches: Sequence[Batch]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over candidate scores, example count) over micro-batches."""
    total, count = None, 0
    for b in batches:
        loss = F.cross_entropy(candidate_scores(model, b), b.labels, reduction="sum")
        total = loss if total is None else total + loss
        count += len(b.labels)
    return total, count


def classification_loss(model, batches: Sequence[Batch]) -> torch.Tensor:
    """Cross-entropy over candidate scores, example-weighted over micro-batches (exact ZO accumulation:
    docs/algorithms.md, "Micro-batches, precision and schedule")."""
    total, count = classification_loss_parts(model, batches)
    return total / count


def accuracy_parts(model, batches: Sequence[Batch]) -> tuple[int, int]:
    """(minus the number of correct argmax predictions, example count): MeZO's non-differentiable objective."""
    correct, count = 0, 0
    for b in batches:
        correct += int((candidate_scores(model, b).argmax(1) == b.labels).sum())
        count += len(b.labels)
    return -correct, count


@torch.inference_mode()
def evaluate(model, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 16,
             device: torch.device | str = "cpu", objective: str = "classification", tokenizer=None) -> dict:
    """Score `encoded` as the task's `objective` kind says (docs/algorithms.md, "Evaluation").

    classification: accuracy (argmax mean option log-prob, no calibration; ReCoRD counts any gold) and mean
    cross-entropy over the candidates. lm (COPA, ReCoRD): the same accuracy, and the token cross-entropy on the
    gold candidate as loss. generation: token F1 and exact match of greedy decodes (needs `tokenizer`), the
    predictions in input order, and the token cross-entropy on the gold target as loss.
    """
    was_training = model.training
    model.eval()
    n = max(len(encoded), 1)
    # longest first: similar lengths share a batch, so little padding is computed
    order = sorted(range(len(encoded)), key=lambda i: -max(len(r) for r in encoded[i].rows))
    groups = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    chunks = [[encoded[i] for i in group] for group in groups]
    result: dict = {"num_examples": len(encoded)}
    if objective in ("lm", "generation"):  # one chunk at a time: the whole split never sits in one batch
        nll, tokens = 0.0, 0
        for chunk in chunks:
            total, count = lm_loss_parts(model, [collate([e.gold_only() for e in chunk], pad_id, device)])
            nll, tokens = nll + float(total), tokens + count
        result["loss"] = nll / max(tokens, 1)
    if objective == "generation":
        if tokenizer is None:
            raise ValueError("generation tasks need the tokenizer to decode")
        predictions: list[str | None] = [None] * len(encoded)
        f1_sum = em_sum = 0.0
        for group, chunk in zip(groups, chunks):
            preds, f1s, ems = generation_metrics(model, tokenizer, chunk, pad_id, device)
            for i, pred in zip(group, preds):
                predictions[i] = pred
            f1_sum, em_sum = f1_sum + sum(f1s), em_sum + sum(ems)
        result.update(f1=f1_sum / n, exact_match=em_sum / n, predictions=predictions)
    else:
        correct, ce_sum = 0, 0.0
        for chunk in chunks:
            batch = collate(chunk, pad_id, device)
            scores = candidate_scores(model, batch)
            pred = scores.argmax(1).tolist()
            correct += sum(p in e.correct for p, e in zip(pred, chunk))
            ce_sum += float(F.cross_entropy(scores, batch.labels, reduction="sum"))
        result["accuracy"] = correct / n
        result.setdefault("loss", ce_sum / n)
    model.train(was_training)
    return result
