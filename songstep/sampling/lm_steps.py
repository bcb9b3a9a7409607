"""What both LM decode loops share: sampling settings, one step's logits processing, rows and
results, and progress reporting.

`songstep.sampling.lm` (the step-wise loop over prefill/step sessions) and
`songstep.sampling.lm_vllm` (the whole-request loop on vLLM, steered by a row hook) both import
this module, so neither imports the other's internals.

Per step, in upstream's PyTorch-backend order: CFG combine `uncond + s·(cond − uncond)` in fp32 →
constraint mask → repetition penalty → top-k → top-p on the **untempered** logits → temperature →
softmax (fp32) → multinomial with each row's own `torch.Generator`. Repetition penalty, top-k and
top-p are transformers' own logits processors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from songstep.errors import InvalidRequest, SongstepError
from songstep.sampling.flow import ProgressFn

NEG_INF = float("-inf")
PROGRESS_EVERY = 16  # decode steps between progress reports


@dataclass(frozen=True)
class SamplingParams:
    """LM sampling settings (defaults: upstream's Python API; CFG off here, the planner turns it
    on for phase 2). `temperature <= 0` means greedy argmax; `top_k <= 0` and `top_p >= 1` are off."""

    temperature: float = 0.85
    top_k: int = 0
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    cfg_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InvalidRequest(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """`uncond + scale·(cond − uncond)` in float32."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + scale * (cond - uncond)


def filter_logits(
    logits: torch.Tensor, params: SamplingParams, history: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Repetition penalty (per row over `history[i]`, ids in logits-column space), then top-k,
    then top-p, all on untempered logits [B, C]. Filtered entries become -inf."""
    out = logits.float()
    if params.repetition_penalty != 1.0 and history is not None:
        penalty = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
        rows = []
        for row, ids in zip(out, history):
            ids = ids.to(out.device)
            rows.append(penalty(ids.view(1, -1), row.view(1, -1).clone())[0] if ids.numel() else row)
        out = torch.stack(rows)
    if params.top_k > 0:
        out = TopKLogitsWarper(params.top_k, filter_value=NEG_INF)(None, out)
    if params.top_p < 1.0:
        out = TopPLogitsWarper(params.top_p, filter_value=NEG_INF)(None, out)
    return out


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax (fp32) of `logits / temperature`."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def sample_rows(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One multinomial draw per row, each with its own generator ([B] long on probs' device).
    A generator on another device than `probs` samples from a copy on its device."""
    picks = []
    for row, gen in zip(probs, generators):
        if gen is not None and gen.device != row.device:
            picks.append(torch.multinomial(row.to(gen.device), 1, generator=gen).to(row.device))
        else:
            picks.append(torch.multinomial(row, 1, generator=gen))
    return torch.cat(picks)


class Constraint(Protocol):
    """Per-sequence decoding constraint (see `songstep.sampling.grammar`)."""

    finished: bool

    @property
    def greedy(self) -> bool: ...

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def advance(self, token_id: int) -> None: ...


@dataclass
class DecodeRow:
    """One sequence to decode: its prompt ids, the unconditional prompt (CFG only), its
    constraint and its generator (on the backend's device for exact reproducibility)."""

    prompt: Sequence[int]
    uncond_prompt: Sequence[int] | None = None
    constraint: Constraint | None = None
    generator: torch.Generator | None = None


@dataclass
class DecodeResult:
    tokens: list[int] = field(default_factory=list)  # generated ids, EOS excluded
    eos: bool = False  # stopped by EOS (else by max_new_tokens)


def check_rows(rows: Sequence[DecodeRow], params: SamplingParams) -> None:
    if not rows:
        raise InvalidRequest("nothing to decode")
    if params.uses_cfg and any(r.uncond_prompt is None for r in rows):
        raise InvalidRequest("cfg_scale != 1 needs an unconditional prompt for every row")


class Step:
    """Logits → tokens for one step of `decode` (stateless apart from the row bookkeeping)."""

    def __init__(self, rows, params, columns, eos_id):
        self.rows, self.params, self.columns, self.eos_id = rows, params, columns, eos_id
        self.n = len(rows)
        self._everything: torch.Tensor | None = None  # the all-allowed mask of unconstrained rows

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.params.uses_cfg:
            return logits[: self.n].float()
        return cfg_combine(logits[: self.n], logits[self.n :], self.params.cfg_scale)

    def mask(self, logits: torch.Tensor, done: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits and `ok` [B] (on the logits' device): whether each row's constraint
        allows some token. Such a row is left unmasked, so the step needs no host sync here and
        sampling stays finite; `choose` raises for it after its one sync."""
        allowed = []
        for row, finished in zip(self.rows, done):
            if finished or row.constraint is None:
                if self._everything is None or self._everything.device != logits.device:
                    self._everything = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
                allowed.append(self._everything)
            else:
                allowed.append(row.constraint.allowed(logits.device))
        allowed = torch.stack(allowed)
        ok = allowed.any(-1)
        return logits.masked_fill(~allowed & ok[:, None], NEG_INF), ok

    def draw(self, logits: torch.Tensor, history=None) -> torch.Tensor:
        """Columns [B] from masked logits: filtered, tempered and sampled with each row's
        generator, or argmax at temperature 0 (on the device; no sync)."""
        if self.params.temperature <= 0:
            return logits.argmax(-1)
        probs = probabilities(filter_logits(logits, self.params, history), self.params.temperature)
        return sample_rows(probs, [r.generator for r in self.rows])

    def choose(self, logits: torch.Tensor, history, done: list[bool]) -> list[int]:
        """Token ids (not columns) for every row."""
        logits, ok = self.mask(self.combine(logits), done)
        cols = self.draw(logits, history)
        if self.params.temperature > 0:
            greedy = [
                r.constraint is not None and not d and r.constraint.greedy for r, d in zip(self.rows, done)
            ]
            if any(greedy):
                cols = torch.where(torch.tensor(greedy, device=cols.device), logits.argmax(-1), cols)
        picked = torch.cat([self.columns[cols], ok.long()]).tolist()  # the step's one host sync
        if not all(picked[self.n :]):
            raise SongstepError("the constraint allows no token")
        return picked[: self.n]


def planned_steps(rows: Sequence[DecodeRow], max_new_tokens: int) -> int:
    """Decode steps when every row's constraint fixes its length (codes due + the EOS step),
    else `max_new_tokens`."""
    dues = [r.constraint.schedule()[2] if hasattr(r.constraint, "schedule") else None for r in rows]
    if any(d is None for d in dues):
        return max_new_tokens
    return min(max(dues) + 1, max_new_tokens)


class Reporter:
    """Calls `progress(done, total)` every `PROGRESS_EVERY` steps and once at the end. The step
    count is known on the host, so reporting needs no device sync."""

    def __init__(self, progress: ProgressFn | None, total: int):
        self.progress, self.total = progress, total

    def __call__(self, t: int) -> None:
        if self.progress is not None and t and t % PROGRESS_EVERY == 0:
            self.progress(t, self.total)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)
