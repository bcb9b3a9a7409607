"""Planner LM sampling: the decode loop.

The per-step logits processing (upstream's PyTorch-backend order: CFG combine in fp32 →
constraint mask → repetition penalty → top-k → top-p on the untempered logits → temperature →
softmax → multinomial with each row's own generator) lives in `songstep.sampling.lm_steps`, which
this loop and the vLLM loop (`songstep.sampling.lm_vllm`) share. The vLLM order (penalty before
CFG, temperature before top-k/top-p, top-p silently dropped by nano-vllm) is not reproduced.

`decode(backend, rows, params, ...)` runs one phase on any `LMBackend`: a step-wise backend
(`capabilities.step_wise`: transformers, the static-cache runner) here, a whole-request one (vLLM)
through `decode_vllm`. It runs one phase for a batch of sequences. With CFG every
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
from dataclasses import dataclass

import torch

from songstep.errors import InvalidRequest
from songstep.models.lm import HeadRows, LMBackend, head_columns, pad_left
from songstep.sampling.flow import ProgressFn
from songstep.sampling.lm_steps import (
    NEG_INF,
    PROGRESS_EVERY,
    Constraint,
    DecodeResult,
    DecodeRow,
    Reporter,
    SamplingParams,
    Step,
    cfg_combine,
    check_rows,
    filter_logits,
    planned_steps,
    probabilities,
    sample_rows,
)
from songstep.sampling.lm_vllm import decode_vllm

__all__ = [
    "NEG_INF", "PROGRESS_EVERY", "Constraint", "DecodeResult", "DecodeRow", "SamplingParams", "Step",
    "cfg_combine", "decode", "filter_logits", "planned_steps", "probabilities", "sample_rows",
]

logger = logging.getLogger(__name__)


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
    check_rows(rows, params)
    if max_new_tokens <= 0:
        return [DecodeResult() for _ in rows]
    if not backend.capabilities.step_wise:  # a whole-request engine (vLLM), steered per step
        if head is not None:
            raise InvalidRequest("this LM backend computes the full LM head: decode with head=None")
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
    step = Step(rows, params, columns, eos_id)
    results = [DecodeResult() for _ in rows]
    done = [False] * len(rows)
    session, logits = backend.prefill(ids, mask, max_new_tokens=max_new_tokens, head=head)
    plan = _device_schedule(rows, params, logits.device)
    steps = max_new_tokens if plan is None else planned_steps(rows, max_new_tokens)
    report = Reporter(progress, steps)
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


def _decode_on_device(session, logits, step: Step, plan: _Schedule, rows, eos_id, pad_id, report: Reporter):
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
