"""What a ZO step minimises on a minibatch (docs/algorithms.md, "Training objective"), chosen by the task and
`--objective`.

- `ce` (default): classification tasks minimise cross-entropy over the candidates' mean log-probs; COPA, ReCoRD
  and the generation tasks minimise token cross-entropy on the gold continuation only.
- `accuracy`: minus the batch accuracy (argmax of the candidate scores), for classification and multiple choice.
- `f1`: minus the mean token F1 of greedy generations from the prompt alone (generation tasks; MeZO Table 3).

The non-differentiable objectives are flat almost everywhere, so many steps see the same value on both probes and
take g = 0: expected, not a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

from zoft.scoring import Encoded, accuracy_parts, classification_loss_parts, collate, lm_loss_parts

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

    def loss_parts(self, model, batches: list):
        """(sum, count) whose ratio is the loss: examples for CE and the metrics, tokens for the LM loss. Data-
        parallel ranks all-reduce the two so that every rank gets the loss of the whole global batch. The sum
        stays a tensor where it is one, so first-order methods can backpropagate through it."""
        if self.objective == "f1":
            from zoft.generate import generation_metrics

            f1s = [f for chunk in batches
                   for f in generation_metrics(model, self.tokenizer, chunk, self.pad_id, self.device)[1]]
            return -sum(f1s), len(f1s)
        if self.objective == "accuracy":
            return accuracy_parts(model, batches)
        if self.task_objective in ("lm", "generation"):
            return lm_loss_parts(model, batches)
        return classification_loss_parts(model, batches)

    def loss(self, model, batches: list):
        total, count = self.loss_parts(model, batches)
        return total / max(count, 1)
