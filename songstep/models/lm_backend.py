"""The planner LM backend protocol: what every runtime implements, and its declared capabilities.

`LMBackend` is the part every backend implements (vocabulary size, the device of the planner's
row generators, teacher-forced target statistics, `release`). A backend then implements either
`StepwiseBackend` (prefill → session → step, full teacher-forced logits: transformers and the
static-cache runner, `songstep.models.lm.TransformersBackend`) or `RequestBackend` (whole
requests on its own scheduler, steered per sampling step by a row hook: vLLM,
`songstep.models.lm_vllm.VLLMBackend`), and says which in its `capabilities`. Callers (the decode
loop, scoring, the planner) dispatch on those capabilities, never on the backend's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

HeadRows = tuple[tuple[int, int], ...]  # half-open [start, stop) vocabulary row ranges, in column order


def head_columns(rows: HeadRows | None, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Token id of every logits column for a (restricted) head; the identity for `None`."""
    if rows is None:
        return torch.arange(vocab_size, device=device)
    return torch.cat([torch.arange(a, b, device=device) for a, b in rows])


class LMSession(Protocol):
    """One generation's KV state. `step` takes one token per row ([B] long) and returns the
    next float32 logits [B, columns]."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LMCapabilities:
    """What a backend can do, declared by the backend; callers read these instead of testing its
    class or probing for methods.

    * `step_wise`: it implements `StepwiseBackend` (`prefill` → session → `step`, and
      teacher-forced `logits`); otherwise `RequestBackend` (whole requests steered by a row hook).
    * `restricted_head`: `prefill(head=...)` multiplies only the given LM-head rows.
    * `full_logits`: `logits` gives full-vocabulary teacher-forced logits (scoring reads those;
      otherwise it reads `target_stats`)."""

    step_wise: bool
    restricted_head: bool
    full_logits: bool


STEPWISE = LMCapabilities(step_wise=True, restricted_head=True, full_logits=True)
WHOLE_REQUEST = LMCapabilities(step_wise=False, restricted_head=False, full_logits=False)


class LMBackend(Protocol):
    """What every planner LM runtime implements."""

    capabilities: LMCapabilities
    vocab_size: int
    device: torch.device  # where the planner's row generators live

    def target_stats(self, ids: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probability (float32 [T]) and rank (long [T], 1 = argmax over the
        full vocabulary) of every token `ids[start:]` given the tokens before it."""
        ...

    def release(self) -> int:
        """Free what the backend can give back between requests (KV caches, CUDA graphs,
        prefix caches); return the bytes freed. Live sessions become stale."""
        ...


class StepwiseBackend(LMBackend, Protocol):
    """A backend the decode loop drives token by token (`capabilities.step_wise`)."""

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        head: HeadRows | None = None,
    ) -> tuple[LMSession, torch.Tensor]:
        """Run the (left-padded) prompts; return a session and float32 logits [B, columns] for
        the next token. With `head` (only if `capabilities.restricted_head`), columns follow
        `head_columns(head)`."""
        ...

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced float32 logits [B, L, vocab] (scoring)."""
        ...


class RequestBackend(LMBackend, Protocol):
    """A backend that runs whole requests on its own scheduler (`not capabilities.step_wise`):
    the decode loop steers each sampling step through a row hook (`songstep.models.lm_vllm`)."""

    max_model_len: int

    def groups(self, requests: Sequence[Any]) -> list[list[Any]]:
        """The requests split into groups that run as one batch from first step to last."""
        ...

    def generate(self, requests: Sequence[Any], sampling: dict[str, Any], hook: Any, *,
                 stop_token_id: int, on_step: Any = None) -> list[Any]:
        """Generate every request, calling `hook(logits, rows)` before each sampling step."""
        ...


def stats_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability and rank (1 = argmax; ties rank by the count of strictly larger logits) of
    `targets` [T] under float32 `logits` [T, V]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.view(-1, 1))
    ranks = (log_probs > picked).sum(-1) + 1
    return picked.view(-1), ranks.long()
