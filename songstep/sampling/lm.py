"""Planner LM sampling: logits processing and the decode loop (spec pipeline.md §5.3, §5.4).

Per step, in upstream's PyTorch-backend order (§5.4):
CFG combine `uncond + s·(cond − uncond)` in fp32 → constraint mask → repetition penalty →
top-k → top-p on the **untempered** logits → temperature → softmax (fp32) → multinomial with
each row's own `torch.Generator` (same seed ⇒ same tokens). Repetition penalty, top-k and
top-p are transformers' own logits processors. The vLLM order (penalty before CFG, temperature
before top-k/top-p, top-p silently dropped by nano-vllm) is not reproduced.

`decode(backend, rows, params, ...)` runs one phase for a batch of sequences. With CFG every
row also has an unconditional prompt; cond and uncond rows go through the LM as one left-padded
batch, and the token sampled from the combined logits is appended to both. Every row carries
its own constraint (`MetadataConstraint` / `CodeConstraint` from `songstep.sampling.grammar`).

The code phase (every row a `CodeConstraint`, whose future masks are known up front, and no
repetition penalty) runs in `_decode_on_device`: the same ops and draws, but the sampled tokens
stay on the device and feed the next step directly, so there is no host sync per token and the
CPU queues step t+1 while the GPU runs step t (on CUDA with the static runner's graphs the
Python per step would otherwise sit on the critical path). The CoT grammar needs each token on
the host and uses the per-token loop.
"""

from __future__ import annotations

import logging
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
from songstep.models.lm import HeadRows, LMBackend, head_columns, pad_left
from songstep.models.lm_vllm import VLLMBackend
from songstep.sampling.flow import ProgressFn

logger = logging.getLogger(__name__)

NEG_INF = float("-inf")
PROGRESS_EVERY = 16  # decode steps between progress reports


@dataclass(frozen=True)
class SamplingParams:
    """LM sampling settings (defaults: spec §8.2 Python API; CFG off here, the planner turns it
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


def _check_rows(rows: Sequence[DecodeRow], params: SamplingParams) -> None:
    if not rows:
        raise InvalidRequest("nothing to decode")
    if params.uses_cfg and any(r.uncond_prompt is None for r in rows):
        raise InvalidRequest("cfg_scale != 1 needs an unconditional prompt for every row")


class _Step:
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


def _history(rows, columns: torch.Tensor, vocab_size: int, params: SamplingParams):
    """Per-row prompt ids in column space (only needed for the repetition penalty)."""
    if params.repetition_penalty == 1.0:
        return None
    lookup = torch.full((vocab_size,), -1, dtype=torch.long)
    lookup[columns.cpu()] = torch.arange(columns.numel())
    out = []
    for row in rows:
        cols = lookup[torch.as_tensor(list(row.prompt), dtype=torch.long)]
        out.append(cols[cols >= 0])
    return out, lookup


def decode(
    backend: LMBackend,
    rows: Sequence[DecodeRow],
    params: SamplingParams,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    head: HeadRows | None = None,
    progress: ProgressFn | None = None,
) -> list[DecodeResult]:
    """Decode one phase for every row until EOS or `max_new_tokens`.

    `progress(done, total)` is called every `PROGRESS_EVERY` steps and once at the end (then
    `done == total`); `total` is the step cap (the code phase with a code target: target + 1).

    `head` restricts the LM head to some vocabulary rows (code phase: `codes.head_rows()`);
    constraints then see logits columns in that order (`CodeConstraint(columns=...)`).
    Finished rows keep stepping with `pad_id` until all rows are done; their outputs are
    ignored."""
    _check_rows(rows, params)
    if max_new_tokens <= 0:
        return [DecodeResult() for _ in rows]
    if isinstance(backend, VLLMBackend):
        from songstep.sampling.lm_vllm import decode_vllm  # it builds on this module

        if head is not None:
            raise InvalidRequest("the vLLM backend computes the full LM head: decode with head=None")
        return decode_vllm(
            backend, rows, params, eos_id=eos_id, max_new_tokens=max_new_tokens,
            steps=planned_steps(rows, max_new_tokens), progress=progress,
        )
    prompts = [r.prompt for r in rows]
    if params.uses_cfg:
        prompts += [r.uncond_prompt for r in rows]
    ids, mask = pad_left(prompts, pad_id)
    columns = head_columns(head, backend.vocab_size, backend.device)
    hist = _history(rows, columns, backend.vocab_size, params)
    history, lookup = hist if hist is not None else (None, None)
    step = _Step(rows, params, columns, eos_id)
    results = [DecodeResult() for _ in rows]
    done = [False] * len(rows)
    session, logits = backend.prefill(ids, mask, max_new_tokens=max_new_tokens, head=head)
    plan = _device_schedule(rows, params, logits.device)
    steps = max_new_tokens if plan is None else planned_steps(rows, max_new_tokens)
    report = _Reporter(progress, steps)
    if plan is not None:
        return _decode_on_device(session, logits, step, plan, rows, eos_id, pad_id, report)
    for t in range(max_new_tokens):
        report(t)
        tokens = step.choose(logits, history, done)
        for i, tok in enumerate(tokens):
            if done[i]:
                continue
            _advance(rows[i], results[i], tok, eos_id)
            done[i] = results[i].eos
            if history is not None and tok != eos_id:
                history[i] = torch.cat([history[i], lookup[tok].view(1)])
        if all(done) or t == max_new_tokens - 1:
            break
        feed = [pad_id if d else tok for d, tok in zip(done, tokens)]
        feed = torch.tensor(feed * (2 if params.uses_cfg else 1), dtype=torch.long, device=backend.device)
        logits = session.step(feed)
    report.finish()
    logger.debug("decoded %d rows: %s tokens", len(rows), [len(r.tokens) for r in results])
    return results


def planned_steps(rows: Sequence[DecodeRow], max_new_tokens: int) -> int:
    """Decode steps when every row's constraint fixes its length (codes due + the EOS step),
    else `max_new_tokens`."""
    dues = [r.constraint.schedule()[2] if hasattr(r.constraint, "schedule") else None for r in rows]
    if any(d is None for d in dues):
        return max_new_tokens
    return min(max(dues) + 1, max_new_tokens)


class _Reporter:
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


# --- the code phase without a host round trip per token ---------------------------------------

SYNC_EVERY = 64  # steps between checks for "every row has stopped" when the code count is free


@dataclass(frozen=True)
class _Schedule:
    """Per-row allowed masks over the steps: row i allows `before[i]` while step < `due[i]`,
    then `after[i]`; `free` when some row has no code target (its count is the model's)."""

    before: torch.Tensor  # [B, C] bool
    after: torch.Tensor  # [B, C] bool
    due: torch.Tensor  # [B] long (a free row: never switches)
    free: bool


def _device_schedule(rows: Sequence[DecodeRow], params: SamplingParams, device) -> _Schedule | None:
    """A `_Schedule` when every row's constraint can say its whole future up front (the code
    phase: `CodeConstraint.schedule`) and no repetition penalty needs the token history; else
    None (the CoT grammar needs each token on the host)."""
    if params.repetition_penalty != 1.0:
        return None
    if not all(r.constraint is not None and hasattr(r.constraint, "schedule") and not r.constraint.greedy for r in rows):
        return None
    before, after, dues = zip(*(r.constraint.schedule(device) for r in rows))
    free = any(d is None for d in dues)
    due = torch.tensor([2**62 if d is None else d for d in dues], dtype=torch.long, device=device)
    return _Schedule(torch.stack(before), torch.stack(after), due, free)


def _decode_on_device(session, logits, step: _Step, plan: _Schedule, rows, eos_id, pad_id, report: _Reporter):
    """The decode loop with the tokens kept on the device: the same masks, draws and feeds as
    `decode`'s host loop (so the same tokens for the same seeds), but no host sync per token,
    so the CPU queues step t+1 while the GPU still runs step t. It syncs once at the end (and
    every `SYNC_EVERY` steps when a row's code count is free, to stop when all rows have)."""
    n, device = len(rows), logits.device
    total = report.total
    out = torch.full((n, total), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    cfg = step.params.uses_cfg
    used = total
    for t in range(total):
        report(t)
        allowed = torch.where((plan.due > t)[:, None], plan.before, plan.after) | done[:, None]
        cols = step.draw(step.combine(logits).masked_fill(~allowed, NEG_INF))
        tokens = step.columns[cols]
        out[:, t] = torch.where(done, pad_id, tokens)
        done = done | (tokens == eos_id)
        if t == total - 1:
            break
        if plan.free and (t + 1) % SYNC_EVERY == 0 and bool(done.all()):
            used = t + 1
            break
        feed = torch.where(done, pad_id, tokens)
        logits = session.step(torch.cat([feed, feed]) if cfg else feed)
    results = _collect(out[:, :used].tolist(), rows, eos_id)
    report.finish()
    return results


def _collect(token_rows: list[list[int]], rows, eos_id: int) -> list[DecodeResult]:
    """Results from the device loop's tokens: up to each row's EOS, replayed through its
    constraint (which checks them and ends in the state the host loop leaves)."""
    results = []
    for row, tokens in zip(rows, token_rows):
        result = DecodeResult()
        for tok in tokens:
            _advance(row, result, tok, eos_id)
            if result.eos:
                break
        results.append(result)
    return results


def _advance(row: DecodeRow, result: DecodeResult, token: int, eos_id: int) -> None:
    if row.constraint is not None:
        row.constraint.advance(token)
    if token == eos_id:
        result.eos = True
    else:
        result.tokens.append(token)
