"""`decode` on the vLLM backend (`songstep.models.lm_vllm`): the same logits processing per step
as the transformers path, applied inside vLLM's sampler through a row hook.

Per step and row (pair): CFG combine in fp32 → constraint mask → repetition penalty → top-k →
top-p on the untempered logits (`filter_logits`, the same functions as `songstep.sampling.lm`);
a greedy constraint step keeps only the argmax. vLLM then applies the temperature and samples
with the row's seed (its own sampler: the distribution is the same as the transformers path,
the draw is not, so the two backends give different tokens for one seed; each is reproducible).
Both rows of a CFG pair get the processed logits and the same seed, so they sample the same
token; a pair that fell out of lock-step is reported as an error, never decoded silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from songstep.errors import SongstepError
from songstep.models.lm_vllm import COND, UNCOND, VLLMBackend, VLLMRequest
from songstep.sampling.flow import ProgressFn

logger = logging.getLogger(__name__)

SEED_RANGE = 2**31 - 1


def row_seed(generator: torch.Generator | None) -> int:
    """The vLLM seed of a row, drawn from its generator (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(0, SEED_RANGE, (1,), generator=generator, device=generator.device))


class _Steer:
    """The row hook of one decode row: turns vLLM's raw logits of the row (pair) into the
    processed logits the transformers path samples from."""

    def __init__(self, row, params, eos_id: int):
        from songstep.sampling.lm import cfg_combine, filter_logits

        self._combine, self._filter = cfg_combine, filter_logits
        self.row, self.params, self.eos_id = row, params, eos_id
        self.prompt = torch.as_tensor(list(row.prompt), dtype=torch.long)
        self.seen = 0  # generated tokens already fed to the constraint
        self.error: BaseException | None = None
        self.desync = False
        self.ok: torch.Tensor | None = None  # every step's constraint allowed some token (on device)

    def raise_if_failed(self, uncond_tokens=None, tokens=None) -> None:
        """After the run: the row's failure, if any, as an exception."""
        if self.ok is not None and not bool(self.ok):
            raise SongstepError("the constraint allows no token")
        if self.error is not None:
            raise self.error
        if self.desync or (self.params.uses_cfg and uncond_tokens != tokens):
            raise SongstepError(
                "vLLM ran a CFG pair out of lock-step (a row was preempted or prefilled alone); "
                "lower the batch size or raise the vLLM backend's max_rows/KV cache"
            )

    def catch_up(self, tokens: Sequence[int]) -> None:
        """Advance the constraint over the tokens generated since the last call (up to EOS)."""
        constraint = self.row.constraint
        while self.seen < len(tokens):
            tok = int(tokens[self.seen])
            if tok < 0:  # vLLM's placeholder for a token still in flight (async scheduling)
                break
            self.seen += 1
            if constraint is not None:
                constraint.advance(tok)
            if tok == self.eos_id:
                break

    def _force_stop(self, logits: torch.Tensor, rows) -> None:
        for index, _ in rows.values():
            logits[index].fill_(float("-inf"))
            logits[index, self.eos_id] = 0.0

    def __call__(self, logits: torch.Tensor, rows: dict[str, tuple[int, list[int]]]) -> None:
        if self.error is not None or self.desync:
            return self._force_stop(logits, rows)
        cfg = self.params.uses_cfg
        cond, uncond = rows.get(COND), rows.get(UNCOND)
        if cond is None or (cfg and (uncond is None or uncond[1] != cond[1])):
            self.desync = True
            return self._force_stop(logits, rows)
        index, output = cond
        try:
            self.catch_up(output)
            x = logits[index].float()
            if cfg:
                x = self._combine(x, logits[uncond[0]], self.params.cfg_scale)
            # as the host loop: a row's constraint masks every step until the row's EOS (a grammar
            # that reached its end still allows only EOS)
            constraint = self.row.constraint
            active = constraint is not None
            if active:
                # as the host loop, without a device sync: a row whose constraint allows nothing
                # is left unmasked (finite sampling), remembered, and reported after the run
                allowed = constraint.allowed(x.device)
                ok = allowed.any()
                self.ok = ok if self.ok is None else self.ok & ok
                x = x.masked_fill(~allowed & ok, float("-inf"))
            if self.params.temperature > 0:
                history = None
                if self.params.repetition_penalty != 1.0:
                    generated = [t for t in output if t != self.eos_id]
                    history = [torch.cat([self.prompt, torch.as_tensor(generated, dtype=torch.long)])]
                x = self._filter(x[None], self.params, history)[0]
                if active and constraint.greedy:
                    best = int(x.argmax())
                    x = torch.full_like(x, float("-inf"))
                    x[best] = 0.0
            logits[index] = x.to(logits.dtype)
            if cfg:
                logits[uncond[0]] = x.to(logits.dtype)
        except Exception as exc:  # reported after the generation; the row is ended here
            self.error = exc
            self._force_stop(logits, rows)


def decode_vllm(
    backend: VLLMBackend,
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
    from songstep.sampling.lm import DecodeResult, _Reporter

    steers = [_Steer(row, params, eos_id) for row in rows]
    requests = []
    for row in rows:
        uncond = row.uncond_prompt if params.uses_cfg else None
        room = backend.max_model_len - max(len(row.prompt), len(uncond or ()))
        if room <= 0:
            raise SongstepError(f"an LM prompt of {len(row.prompt)} tokens fills the vLLM max_model_len {backend.max_model_len}")
        # like the transformers path's cap, but within the engine's context length
        requests.append(VLLMRequest(row.prompt, uncond, row_seed(row.generator), min(max_new_tokens, room)))
    sampling = {"temperature": max(params.temperature, 0.0), "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    groups = len(backend.groups(requests))
    report = _Reporter(progress, (steps or max_new_tokens) * groups)
    count = 0

    def on_step() -> None:
        nonlocal count
        count += 1
        report(count)

    outputs = backend.generate(
        requests,
        sampling,
        {req.key: steer for req, steer in zip(requests, steers)},
        stop_token_id=eos_id,
        on_step=on_step,
    )
    results = []
    for steer, out in zip(steers, outputs):
        steer.raise_if_failed(out.uncond_tokens, out.tokens)
        steer.catch_up(out.tokens)
        result = DecodeResult()
        for tok in out.tokens:
            if tok == eos_id:
                result.eos = True
                break
            result.tokens.append(int(tok))
        results.append(result)
    report.finish()
    return results
