"""Runner for the prompt-format reference cases (`tests/fixtures/reference/prompts.json`).

`run_prompt_case(case["input"])` returns every field a case records, built from the input
alone, so other cases in the same format can be checked the same way. `QWEN3_CHAT_TEMPLATE`
and `Qwen3Templater` render chat messages like the Qwen3 tokenizers do, for tests and for
smoke runs without a downloaded tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from songstep import prompts
from songstep.constants import DEFAULT_NEGATIVE_PROMPT
from songstep.tasks import get_task

logger = logging.getLogger(__name__)

# A minimal template with the Qwen3 template's output for these prompts: every turn closes with
# `<|im_end|>\n`; an assistant message holding `</think>` renders its reasoning as
# `<think>\n{reasoning stripped of newlines}\n</think>\n\n{content}`; the generation prompt is
# `<|im_start|>assistant\n` (plus an empty think block only when enable_thinking is false).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'assistant' and '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set answer = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + answer -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


class Qwen3Templater:
    """An `apply_chat_template` over a Jinja chat template (default: QWEN3_CHAT_TEMPLATE)."""

    def __init__(self, template: str = QWEN3_CHAT_TEMPLATE) -> None:
        import jinja2  # ships with transformers; imported here so the module imports without it

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self._template = env.from_string(template)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        if tokenize:
            raise NotImplementedError("Qwen3Templater renders text only (tokenize=False)")
        return self._template.render(
            messages=conversation, add_generation_prompt=add_generation_prompt, **kwargs
        )


def _tracks(case_input: Mapping[str, Any]) -> Any:
    if case_input.get("complete_track_classes"):
        return case_input["complete_track_classes"]
    return case_input.get("track_name")


def _user_fields(case_input: Mapping[str, Any]) -> tuple[Any, str, str, Any]:
    return (
        case_input.get("bpm"),
        case_input.get("keyscale") or "",
        case_input.get("timesignature") or "",
        case_input.get("duration"),
    )


def _lm_prompts(case_input: Mapping[str, Any], cot_text: str) -> dict[str, Any]:
    caption = case_input.get("caption") or ""
    lyrics = case_input.get("lyrics") or ""
    custom_neg = case_input.get("negative_prompt_custom", DEFAULT_NEGATIVE_PROMPT)
    phase1 = prompts.build_phase1_prompt
    phase2 = prompts.build_phase2_prompt
    return {
        "lm_phase1_cond": phase1(caption, lyrics).to_dict(),
        "lm_phase1_uncond_default_neg": phase1(caption, lyrics, unconditional=True).to_dict(),
        "lm_phase1_uncond_custom_neg": phase1(
            caption, lyrics, unconditional=True, negative_prompt=custom_neg
        ).to_dict(),
        "lm_phase2_cond": phase2(caption, lyrics, cot_text, legacy=True).to_dict(),
        "lm_phase2_uncond": phase2(caption, lyrics, cot_text, unconditional=True, legacy=True).to_dict(),
    }


def run_prompt_case(case_input: Mapping[str, Any]) -> dict[str, Any]:
    """Every output field of one prompts.json case, derived from its `input` alone.

    LM prompts use the legacy phase-2 layout (the fixtures' revision); `dit_metas` is taken from
    the input when given, else rebuilt (user metas, blanks filled from `lm_metas`).
    """
    instruction = get_task(case_input.get("task") or "text2music").instruction(_tracks(case_input))
    bpm, keyscale, timesignature, duration = _user_fields(case_input)
    metas_dict = prompts.build_metas_dict(bpm, keyscale, timesignature, duration)
    lm_metas = case_input.get("lm_metas")
    dit_metas = case_input.get("dit_metas")
    if dit_metas is None:
        dit_metas = prompts.merge_lm_metas(metas_dict, lm_metas)
    caption_prompt, lyrics_prompt = prompts.build_dit_inputs(
        instruction,
        case_input.get("caption") or "",
        case_input.get("lyrics") or "",
        dit_metas,
        case_input.get("language") or "unknown",
    )
    cot_source = lm_metas if lm_metas is not None else prompts.user_cot_metadata(*_user_fields(case_input))
    cot_text = prompts.format_cot(cot_source)
    logger.debug("prompt case %s built", case_input.get("id"))
    return {
        "instruction": instruction,
        "metas_dict": metas_dict,
        "metas_dict_passed_to_build_dit_inputs": dict(dit_metas),
        "metas_string": prompts.format_metas(dit_metas),
        "dit_caption_prompt": caption_prompt,
        "dit_lyrics_prompt": lyrics_prompt,
        "lm_cot_text": cot_text,
        **_lm_prompts(case_input, cot_text),
    }
