"""AutoScore: how well 5 Hz codes match their
conditions, read off the planner LM's teacher-forced logits.

Context: the understand prompt with the codes (conditional) or with `NO USER INPUT`
(unconditional). For a target text, the logits predicting its tokens come from one forward of
`prompt + target` (offset = the prompt's token count, as upstream).

* metadata fields (bpm, duration, genres, keyscale, language, timesignature), target
  `<think>\\n{yaml of the field}\\n</think>\\n`: position-weighted top-k recall under the
  conditional prompt (per target token `1 − (rank − 1)/k` when in the top k, else 0; averaged);
* caption (same target form) and lyrics (`<think>\\n</think>\\n# Lyric\\n{lyrics}\\n`):
  PMI = mean log p(target | codes) − mean log p(target | no input); score = sigmoid(PMI / scale);
* total: caption 0.5, lyrics 0.3, mean of the metadata scores 0.2, renormalised over the
  components present.

The pure functions below take logits [T, V] and target ids [T]; `score_codes` runs the LM.
Difference from upstream: field values are written as the CoT writes them (`timesignature: 4`,
digit strings as integers) rather than YAML-dumped raw strings (upstream scored `'4'`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import yaml

from songstep.planner.types import PlannerHost, Score
from songstep.prompts import build_understand_prompt, cot_items, render_chat_prompt

METADATA_KEYS = ("bpm", "duration", "genres", "keyscale", "language", "timesignature")
WEIGHTS = {"caption": 0.5, "lyrics": 0.3, "metadata": 0.2}
TOPK = 10
DEFAULT_SCALE = 0.1  # upstream's function default; its UI's "score sensitivity" is 0.5


def topk_recall(logits: torch.Tensor, targets: torch.Tensor, k: int = TOPK) -> float:
    """Mean over target positions of `1 − (rank − 1)/k` when the target token ranks within the
    top k of that position's logits (rank 1 = argmax), else 0. Empty target → 0."""
    if targets.numel() == 0:
        return 0.0
    top = torch.topk(logits.float(), k=min(k, logits.shape[-1]), dim=-1).indices  # [T, k]
    hits = top == targets.view(-1, 1).to(top.device)
    rank = torch.where(hits.any(-1), hits.float().argmax(-1) + 1, torch.zeros_like(targets, device=top.device))
    weights = torch.where(rank > 0, 1.0 - (rank.float() - 1.0) / k, torch.zeros_like(rank, dtype=torch.float))
    return float(weights.mean())


def mean_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean log-softmax probability of the target tokens (no temperature). Empty → -inf."""
    if targets.numel() == 0:
        return float("-inf")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(logp.gather(-1, targets.view(-1, 1).to(logp.device)).mean())


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def pmi_score(log_prob_cond: float, log_prob_uncond: float, scale: float = DEFAULT_SCALE) -> float:
    """sigmoid(PMI / scale) with PMI = log p(cond) − log p(uncond)."""
    return sigmoid((log_prob_cond - log_prob_uncond) / scale)


def reward(scores: Mapping[str, float], weights: Mapping[str, float] = WEIGHTS) -> float:
    """Caption / lyrics / mean-of-metadata weighted sum, weights renormalised over the components
    present; 0 when nothing was scored."""
    parts: dict[str, float] = {}
    if "caption" in scores:
        parts["caption"] = scores["caption"]
    if "lyrics" in scores:
        parts["lyrics"] = scores["lyrics"]
    meta = [v for k, v in scores.items() if k not in ("caption", "lyrics")]
    if meta:
        parts["metadata"] = sum(meta) / len(meta)
    total_weight = sum(weights[k] for k in parts)
    if total_weight == 0:
        return 0.0
    return sum(value * weights[k] / total_weight for k, value in parts.items())


def field_target(key: str, value: Any) -> str:
    """`<think>\\n{key}: {value}\\n</think>\\n` with the value as the CoT writes it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    item = cot_items({key: value}) if key != "genres" else {key: value}
    body = yaml.dump(item or {key: value}, allow_unicode=True, sort_keys=True).strip()
    return f"<think>\n{body}\n</think>\n"


def lyrics_target(lyrics: str) -> str:
    return f"<think>\n</think>\n# Lyric\n{lyrics}\n"


def ranks_recall(ranks: torch.Tensor, k: int = TOPK) -> float:
    """`topk_recall` from each target token's rank (1 = argmax). Empty → 0."""
    if ranks.numel() == 0:
        return 0.0
    weights = torch.where(ranks <= k, 1.0 - (ranks.float() - 1.0) / k, torch.zeros_like(ranks, dtype=torch.float))
    return float(weights.mean())


class Forced:
    """What one teacher-forced target gives: logits and targets (transformers backend), or the
    target tokens' log-probabilities and ranks (vLLM backend, from its prompt logprobs)."""

    def __init__(self, logits=None, targets=None, log_probs=None, ranks=None):
        self.logits, self.targets, self.log_probs, self.ranks = logits, targets, log_probs, ranks

    def recall(self, k: int) -> float:
        if self.ranks is not None:
            return ranks_recall(self.ranks, k)
        return topk_recall(self.logits, self.targets, k=k)

    def mean_log_prob(self) -> float:
        if self.log_probs is not None:
            return float(self.log_probs.mean()) if self.log_probs.numel() else float("-inf")
        return mean_log_prob(self.logits, self.targets)


class TeacherForcer:
    """The LM's view of a target text after a prompt: the backend's teacher-forced logits when its
    capabilities say it has them (`full_logits`), else (vLLM) its `target_stats`, the targets'
    log-probabilities and ranks."""

    def __init__(self, planner: PlannerHost):
        self.planner = planner

    def __call__(self, prompt: str, target: str) -> Forced:
        lm = self.planner.lm
        prompt_len = len(lm.encode(prompt))
        ids = lm.encode(prompt + target)
        targets = torch.tensor(ids[prompt_len:], dtype=torch.long)
        if len(ids) <= prompt_len:
            return Forced(torch.empty(0, lm.backend.vocab_size), targets)
        if not lm.backend.capabilities.full_logits:
            log_probs, ranks = lm.backend.target_stats(ids, prompt_len)
            return Forced(targets=targets, log_probs=log_probs, ranks=ranks)
        logits = lm.backend.logits(torch.tensor([ids], dtype=torch.long))[0]
        return Forced(logits[prompt_len - 1 : -1].float().cpu(), targets)


def _pmi(forcer: TeacherForcer, cond: str, uncond: str, target: str, scale: float) -> tuple[float, float]:
    lp_cond = forcer(cond, target).mean_log_prob()
    lp_uncond = forcer(uncond, target).mean_log_prob()
    pmi = lp_cond - lp_uncond
    return pmi, sigmoid(pmi / scale)


def score_codes(
    planner: PlannerHost,
    audio_codes: str,
    *,
    caption: str,
    lyrics: str,
    metadata: Mapping[str, Any],
    scale: float = DEFAULT_SCALE,
    topk: int = TOPK,
) -> Score:
    """AutoScore of one code string (see the module docstring). The caption is the metadata's
    when it has one, else `caption`; blank captions/lyrics and None fields are not scored."""
    tok = planner.lm.tokenizer
    cond = render_chat_prompt(tok, build_understand_prompt(audio_codes))
    uncond = render_chat_prompt(tok, build_understand_prompt(None))
    forcer = TeacherForcer(planner)
    fields: dict[str, float] = {}
    pmis: dict[str, float] = {}
    for key in METADATA_KEYS:
        if metadata.get(key) is not None:
            fields[key] = forcer(cond, field_target(key, metadata[key])).recall(topk)
    cap = metadata.get("caption") or caption
    if cap and str(cap).strip():
        pmis["caption"], fields["caption"] = _pmi(forcer, cond, uncond, field_target("caption", cap), scale)
    if lyrics and lyrics.strip():
        pmis["lyrics"], fields["lyrics"] = _pmi(forcer, cond, uncond, lyrics_target(lyrics), scale)
    return Score(fields=fields, pmi=pmis, total=reward(fields))
