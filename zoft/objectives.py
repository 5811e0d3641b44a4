"""What a ZO step minimises on a minibatch (ALGORITHMS.md §8.3), chosen by the task and `--objective`.

- `ce` (default): classification tasks minimise cross-entropy over the candidates' mean log-probs; COPA, ReCoRD
  and the generation tasks minimise token cross-entropy on the gold continuation only.
- `accuracy`: minus the batch accuracy (argmax of the candidate scores), for classification and multiple choice.
- `f1`: minus the mean token F1 of greedy generations from the prompt alone (generation tasks; MeZO Table 3).

The non-differentiable objectives are flat almost everywhere, so many steps see the same value on both probes and
take g = 0: expected, not a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

from zoft.scoring import Encoded, accuracy_objective, classification_loss, collate, lm_loss

OBJECTIVES = ("ce", "accuracy", "f1")


def check(objective: str, task_objective: str, task_name: str) -> str | None:
    """None if `objective` fits the task, else the reason (one line naming the flag)."""
    if objective not in OBJECTIVES:
        return f"--objective {objective}: choose {', '.join(OBJECTIVES)}"
    if objective == "f1" and task_objective != "generation":
        return f"--objective f1 applies to generation tasks (squad, drop), not {task_name}; use accuracy"
    if objective == "accuracy" and task_objective == "generation":
        return f"--objective accuracy applies to classification tasks; {task_name} is generated: use f1"
    return None


class Objective:
    """Builds a step's batches once and evaluates the objective on them (the ZO closure calls `loss`)."""

    def __init__(self, objective: str, task_objective: str, pad_id: int, device, tokenizer=None):
        self.objective, self.task_objective = objective, task_objective
        self.pad_id, self.device, self.tokenizer = pad_id, device, tokenizer

    @property
    def differentiable(self) -> bool:
        return self.objective == "ce"

    def batches(self, chunks: Sequence[Sequence[Encoded]]) -> list:
        if self.objective == "f1":
            return [list(chunk) for chunk in chunks]
        if self.objective == "ce" and self.task_objective in ("lm", "generation"):
            return [collate([e.gold_only() for e in chunk], self.pad_id, self.device) for chunk in chunks]
        return [collate(list(chunk), self.pad_id, self.device) for chunk in chunks]

    def loss(self, model, batches: list):
        if self.objective == "f1":
            from zoft.generate import generation_metrics

            f1s = [f for chunk in batches
                   for f in generation_metrics(model, self.tokenizer, chunk, self.pad_id, self.device)[1]]
            return -sum(f1s) / len(f1s)
        if self.objective == "accuracy":
            return accuracy_objective(model, batches)
        if self.task_objective in ("lm", "generation"):
            return lm_loss(model, batches)
        return classification_loss(model, batches)

    def loss_parts(self, model, batches: list) -> tuple[float, float]:
        """(sum, count) whose ratio is `loss`: what data-parallel ranks all-reduce so that every rank gets the
        loss of the whole global batch (examples for CE and the metrics, tokens for the LM loss)."""
        import torch.nn.functional as F

        from zoft.scoring import candidate_scores, gold_token_nll

        if self.objective == "f1":
            from zoft.generate import generation_metrics

            f1s = [f for chunk in batches
                   for f in generation_metrics(model, self.tokenizer, chunk, self.pad_id, self.device)[1]]
            return -float(sum(f1s)), float(len(f1s))
        total, count = 0.0, 0.0
        for b in batches:
            if self.objective == "accuracy":
                total -= float((candidate_scores(model, b).argmax(1) == b.labels).sum())
                count += len(b.labels)
            elif self.task_objective in ("lm", "generation"):
                nll, n = gold_token_nll(model, b)
                total, count = total + float(nll), count + n
            else:
                total += float(F.cross_entropy(candidate_scores(model, b), b.labels, reduction="sum"))
                count += len(b.labels)
        return total, count
