"""songstep.testing.prompt_cases against tests/fixtures/reference/prompts.json, and the Qwen3-style
rendering of the newest LM layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from songstep import prompts as p
from songstep.testing.prompt_cases import Qwen3Templater, run_prompt_case

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "prompts.json"
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
FIELDS = (
    "instruction",
    "metas_dict",
    "metas_string",
    "dit_caption_prompt",
    "dit_lyrics_prompt",
    "lm_cot_text",
    "lm_phase1_cond",
    "lm_phase1_uncond_default_neg",
    "lm_phase1_uncond_custom_neg",
    "lm_phase2_cond",
    "lm_phase2_uncond",
)
LM_INSTR = "Generate audio semantic tokens based on the given conditions:"


def test_fixture_has_nine_cases():
    assert len(CASES) == 9


@pytest.mark.parametrize("case", CASES, ids=[c["input"]["id"] for c in CASES])
def test_case_matches_field_by_field(case):
    out = run_prompt_case(case["input"])
    for field in FIELDS:
        assert out[field] == case[field], field
    for field, expected in case.items():  # every other recorded field too
        if field != "input":
            assert out[field] == expected, field


@pytest.mark.parametrize("case", CASES, ids=[c["input"]["id"] for c in CASES])
def test_case_independent_of_id_and_derived_dit_metas(case):
    """Nothing is looked up by id, and dropping `dit_metas` rebuilds the same dict."""
    case_input = copy.deepcopy(case["input"])
    case_input["id"] = "renamed"
    case_input.pop("dit_metas")
    out = run_prompt_case(case_input)
    for field in FIELDS:
        assert out[field] == case[field], field


def test_new_case_in_same_format():
    out = run_prompt_case(
        {
            "id": "extra_bpm0",
            "task": "extract",
            "track_name": "drums",
            "caption": "# Instruction\nold\n\n# Caption\nwrapped caption\n\n# Metas\n- bpm: 1\n",
            "lyrics": "",
            "language": "de",
            "bpm": 0,
            "keyscale": " ",
            "timesignature": "",
            "duration": 0,
            "negative_prompt_custom": "NO USER INPUT",
        }
    )
    assert out["instruction"] == "Extract the DRUMS track from the audio:"
    assert out["metas_dict"] == {"bpm": "N/A", "keyscale": "N/A", "timesignature": "N/A"}
    assert (
        out["metas_string"] == "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
    )
    assert "# Caption\nwrapped caption\n\n# Metas" in out["dit_caption_prompt"]
    assert out["lm_cot_text"] == "<think>\nbpm: 0\n</think>"  # a bpm of 0 is a value for the LM
    # The "custom" negative prompt equals the default: no caption slot.
    assert out["lm_phase1_uncond_custom_neg"]["messages"][1]["content"] == "# Lyric\n\n"


def _prefix(user: str) -> str:
    """The literal rendered prefix of the LM chat prompt."""
    return (
        f"<|im_start|>system\n# Instruction\n{LM_INSTR}\n\n<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_newest_layout_rendered_with_qwen3_template():
    case = CASES[0]
    inp = case["input"]
    templater = Qwen3Templater()
    user = f"# Caption\n{inp['caption']}\n\n# Lyric\n{inp['lyrics']}\n"
    cot = case["lm_cot_text"]

    phase1 = p.render_chat_prompt(templater, p.build_phase1_prompt(inp["caption"], inp["lyrics"]))
    assert phase1 == _prefix(user)

    phase2 = p.render_chat_prompt(templater, p.build_phase2_prompt(inp["caption"], inp["lyrics"], cot))
    assert phase2 == _prefix(user) + cot + "\n\n"
    assert phase2.endswith("timesignature: 4\n</think>\n\n")  # turn kept open: no <|im_end|>
    assert phase2 == p.phase2_prompt_from_phase1(phase1, cot)

    uncond = p.build_phase2_prompt(inp["caption"], inp["lyrics"], cot, unconditional=True)
    assert p.render_chat_prompt(templater, uncond) == _prefix("NO USER INPUT") + "<think>\n\n</think>\n\n"


def test_legacy_layout_rendered_with_qwen3_template_closes_the_turn():
    case = CASES[0]
    templater = Qwen3Templater()
    user = case["lm_phase1_cond"]["messages"][1]["content"]
    cond = p.render_chat_prompt(
        templater,
        p.build_phase2_prompt(
            case["input"]["caption"], case["input"]["lyrics"], case["lm_cot_text"], legacy=True
        ),
    )
    assert cond == _prefix(user) + case["lm_cot_text"] + "\n\n<|im_end|>\n"
    # The fixture's message dicts render identically.
    fixture = case["lm_phase2_uncond"]
    rendered = templater.apply_chat_template(
        fixture["messages"], tokenize=False, add_generation_prompt=fixture["add_generation_prompt"]
    )
    assert rendered == _prefix(user) + "<think>\n\n</think>\n\n<|im_end|>\n"


def test_template_enable_thinking_false_and_tokenize_refused():
    templater = Qwen3Templater()
    msgs = [{"role": "user", "content": "hi"}]
    out = templater.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    with pytest.raises(NotImplementedError):
        templater.apply_chat_template(msgs, tokenize=True)
