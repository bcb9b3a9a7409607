"""`decode` on a whole-request backend (vLLM, `songstep.models.lm_vllm`): the same logits processing per step
as the transformers path, applied inside vLLM's sampler through a row hook.

Every step, for all rows of the batch at once and with the host loop's own code (`Step.combine`
and `Step.mask` of `songstep.sampling.lm_steps`, then `filter_logits`): CFG combine in fp32 →
constraint mask → repetition penalty → top-k → top-p on the untempered logits; a greedy
constraint step keeps only the argmax. vLLM then applies the temperature and samples with each
row's seed (its own sampler: the distribution is the transformers path's, the draw is not, so
the two backends give different tokens for one seed; each is reproducible). Both rows of a CFG
pair get the processed logits and the same seed, so they sample the same token; a pair that fell
out of lock-step is reported as an error, never decoded silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from songstep.errors import SongstepError
from songstep.models.lm_backend import RequestBackend
from songstep.models.lm_vllm import COND, UNCOND, VLLMRequest
from songstep.sampling.flow import ProgressFn
from songstep.sampling.lm_steps import NEG_INF, DecodeResult, Reporter, Step, filter_logits

logger = logging.getLogger(__name__)

SEED_RANGE = 2**31 - 1


def row_seed(generator: torch.Generator | None) -> int:
    """The vLLM seed of a row, drawn from its generator (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(0, SEED_RANGE, (1,), generator=generator, device=generator.device))


def _pairs(slots: dict[str, tuple[int, list[int]]]) -> dict[int, dict[str, tuple[int, list[int]]]]:
    """`{"cond:3": entry, "uncond:3": entry}` → `{3: {"cond": entry, "uncond": entry}}`."""
    out: dict[int, dict[str, tuple[int, list[int]]]] = {}
    for role, entry in slots.items():
        kind, _, row = role.partition(":")
        out.setdefault(int(row), {})[kind] = entry
    return out


class _Steer:
    """The row hook of one `decode_vllm` call: turns vLLM's raw logits of its rows into the
    processed logits the transformers path samples from, for every row of the batch at once."""

    def __init__(self, rows, params, eos_id: int):
        self.rows, self.params, self.eos_id = list(rows), params, eos_id
        self.prompts = [torch.as_tensor(list(r.prompt), dtype=torch.long) for r in self.rows]
        self.seen = [0] * len(self.rows)  # generated tokens already fed to each row's constraint
        self.errors: dict[int, BaseException] = {}
        self.desync: set[int] = set()
        self.ok: torch.Tensor | None = None  # every row's constraint allowed some token (on device)

    def catch_up(self, i: int, tokens: Sequence[int]) -> None:
        """Advance row i's constraint over the tokens generated since the last call (up to EOS;
        vLLM's placeholder -1 for a token still in flight stops it)."""
        constraint = self.rows[i].constraint
        while self.seen[i] < len(tokens):
            tok = int(tokens[self.seen[i]])
            if tok < 0:
                break
            self.seen[i] += 1
            if constraint is not None:
                constraint.advance(tok)
            if tok == self.eos_id:
                break

    def _stop(self, logits: torch.Tensor, entries) -> None:
        for index, _ in entries:
            logits[index].fill_(NEG_INF)
            logits[index, self.eos_id] = 0.0

    def _live(self, logits: torch.Tensor, slots) -> list[tuple[int, int, int | None]]:
        """(row, cond index, uncond index) of the rows to process this step; the others (out of
        lock-step, or failed) are stopped with EOS."""
        cfg = self.params.uses_cfg
        live = []
        for i, pair in sorted(_pairs(slots).items()):
            cond, uncond = pair.get(COND), pair.get(UNCOND)
            if i not in self.errors and i not in self.desync:
                if cond is None or (cfg and (uncond is None or uncond[1] != cond[1])):
                    self.desync.add(i)
                else:
                    try:
                        self.catch_up(i, cond[1])
                        live.append((i, cond[0], uncond[0] if cfg else None))
                        continue
                    except Exception as exc:  # raised after the run; the row ends here
                        self.errors[i] = exc
            self._stop(logits, pair.values())
        return live

    def __call__(self, logits: torch.Tensor, slots: dict[str, tuple[int, list[int]]]) -> None:
        live = self._live(logits, slots)
        if not live:
            return
        rows = [self.rows[i] for i, _, _ in live]
        cond = torch.tensor([c for _, c, _ in live], device=logits.device)
        uncond = torch.tensor([u for _, _, u in live], device=logits.device) if self.params.uses_cfg else None
        stacked = logits[cond] if uncond is None else torch.cat([logits[cond], logits[uncond]])
        step = Step(rows, self.params, None, self.eos_id)
        # the host loop's mask, without a device sync: a row whose constraint allows nothing is
        # left unmasked (finite sampling), remembered in `ok`, and reported after the run
        x, ok = step.mask(step.combine(stacked), [False] * len(rows))
        self.ok = ok.all() if self.ok is None else self.ok & ok.all()
        if self.params.temperature > 0:
            greedy = [r.constraint is not None and r.constraint.greedy for r in rows]
            best = x.argmax(-1) if any(greedy) else None
            x = filter_logits(x, self.params, self._history(live, slots) if self.params.repetition_penalty != 1.0 else None)
            for k, g in enumerate(greedy):
                if g:
                    x[k] = torch.where(torch.arange(x.shape[-1], device=x.device) == best[k], 0.0, NEG_INF)
        x = x.to(logits.dtype)
        logits[cond] = x
        if uncond is not None:
            logits[uncond] = x

    def _history(self, live, slots) -> list[torch.Tensor]:
        """Each live row's prompt + generated ids (EOS excluded), for the repetition penalty."""
        out = []
        for i, _, _ in live:
            generated = [t for t in slots[f"{COND}:{i}"][1] if t != self.eos_id and t >= 0]
            out.append(torch.cat([self.prompts[i], torch.as_tensor(generated, dtype=torch.long)]))
        return out

    def raise_if_failed(self, i: int, tokens: list[int], uncond_tokens: list[int] | None) -> None:
        """After the run: row i's failure, if any, as an exception."""
        if self.ok is not None and not bool(self.ok):
            raise SongstepError("the constraint allows no token")
        if i in self.errors:
            raise self.errors[i]
        if i in self.desync or (self.params.uses_cfg and uncond_tokens != tokens):
            raise SongstepError(
                "vLLM ran a CFG pair out of lock-step (a row was preempted or prefilled alone); "
                "lower the batch size or raise the vLLM backend's max_rows/KV cache"
            )


def decode_vllm(
    backend: RequestBackend,
    rows,
    params,
    *,
    eos_id: int,
    max_new_tokens: int,
    steps: int | None = None,
    progress: ProgressFn | None = None,
):
    """`songstep.sampling.lm.decode` for the vLLM backend (same arguments and results; no
    restricted head). `steps` is the step count for progress (default `max_new_tokens`)."""
    requests = []
    for row in rows:
        uncond = row.uncond_prompt if params.uses_cfg else None
        room = backend.max_model_len - max(len(row.prompt), len(uncond or ()))
        if room <= 0:
            raise SongstepError(f"an LM prompt of {len(row.prompt)} tokens fills the vLLM max_model_len {backend.max_model_len}")
        # like the transformers path's cap, but within the engine's context length
        requests.append(VLLMRequest(row.prompt, uncond, row_seed(row.generator), min(max_new_tokens, room)))
    steer = _Steer(rows, params, eos_id)
    sampling = {"temperature": max(params.temperature, 0.0), "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    report = Reporter(progress, (steps or max_new_tokens) * len(backend.groups(requests)))
    count = 0

    def on_step() -> None:
        nonlocal count
        count += 1
        report(count)

    outputs = backend.generate(requests, sampling, steer, stop_token_id=eos_id, on_step=on_step)
    results = []
    for i, out in enumerate(outputs):
        steer.raise_if_failed(i, out.tokens, out.uncond_tokens)
        steer.catch_up(i, out.tokens)
        result = DecodeResult()
        for tok in out.tokens:
            if tok == eos_id:
                result.eos = True
                break
            result.tokens.append(int(tok))
        results.append(result)
    report.finish()
    return results
