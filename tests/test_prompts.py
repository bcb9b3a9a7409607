"""songstep.prompts: DiT prompts, CoT serialisation, LM chat prompts, output parsing, REST hints."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep import prompts as p
from songstep.errors import CheckpointError

T2M = "Fill the audio semantic mask based on the given conditions:"
LM_SYSTEM = "# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"

# ------------------------------------------------------------------------------------------
# DiT prompts
# ------------------------------------------------------------------------------------------


def test_instruction_gets_trailing_colon_and_default():
    assert p.format_instruction("Repaint the mask area") == "Repaint the mask area:"
    assert p.format_instruction("Already:") == "Already:"
    assert p.format_instruction(None) == T2M
    assert p.format_instruction("") == T2M


def test_caption_prompt_exact_layout():
    metas = {"bpm": 120, "timesignature": "4", "keyscale": "C major", "duration": 30.9}
    out = p.build_dit_caption_prompt("Do it", "calm piano", metas)
    assert out == (
        "# Instruction\nDo it:\n\n# Caption\ncalm piano\n\n# Metas\n"
        "- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds\n<|endoftext|>\n"
    )


def test_caption_prompt_strips_existing_sft_block():
    existing = p.build_dit_caption_prompt(None, "  inner caption\nsecond line ", None)
    out = p.build_dit_caption_prompt(None, existing, None)
    assert "# Caption\ninner caption\nsecond line\n\n# Metas" in out
    assert out.count("# Instruction") == 1
    # Without the metas block: everything after `# Caption\n` to the end.
    assert p.extract_sft_caption("# Instruction\nx\n\n# Caption\nabc\n") == "abc"
    # Only `# Caption` (no `# Instruction`): taken literally.
    assert p.extract_sft_caption("# Caption\nabc") == "# Caption\nabc"


def test_lyrics_prompt_has_no_newline_before_eot():
    assert (
        p.build_dit_lyrics_prompt("[Verse]\nla", "en")
        == "# Languages\nen\n\n# Lyric\n[Verse]\nla<|endoftext|>"
    )
    assert p.build_dit_lyrics_prompt("", "unknown") == "# Languages\nunknown\n\n# Lyric\n<|endoftext|>"


@pytest.mark.parametrize(
    ("metas", "expected"),
    [
        (None, "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"),
        ({}, "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"),
        (
            {"bpm": 0, "timesignature": "4/4", "keyscale": "B♭ major", "duration": "95 seconds"},
            "- bpm: N/A\n- timesignature: 4/4\n- keyscale: B♭ major\n- duration: 95 seconds\n",
        ),
        (
            {"bpm": None, "timesignature": "", "keyscale": None, "duration": 12.99},
            "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 12 seconds\n",
        ),
        (
            {"bpm": 90, "duration": -1},
            "- bpm: 90\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n",
        ),
        (
            {"tempo": 100, "time_signature": "3", "key": "A minor", "length": 61},
            "- bpm: 100\n- timesignature: 3\n- keyscale: A minor\n- duration: 61 seconds\n",
        ),
    ],
)
def test_format_metas(metas, expected):
    assert p.format_metas(metas) == expected


def test_format_metas_string_passthrough_and_odd_durations():
    assert p.format_metas("- bpm: 1\n") == "- bpm: 1\n"
    assert p.format_duration_text(math.nan) == "30 seconds"
    assert p.format_duration_text(math.inf) == "30 seconds"
    assert p.format_duration_text(0) == "30 seconds"
    assert p.format_duration_text("  ") == "30 seconds"
    assert p.format_duration_text(True) == "30 seconds"


def test_dit_inputs_metas_caption_and_language_override():
    metas = {"bpm": 1, "caption": "lm caption", "language": "ja"}
    cap, lyr = p.build_dit_inputs(None, "user caption", "x", metas, "en")
    assert "# Caption\nlm caption\n\n" in cap
    assert lyr.startswith("# Languages\nja\n")
    cap, lyr = p.build_dit_inputs(None, "user caption", "x", {"caption": None, "language": ""}, "en")
    assert "# Caption\nuser caption\n\n" in cap
    assert lyr.startswith("# Languages\nen\n")


def test_build_metas_dict_and_merge():
    assert p.build_metas_dict(None, "", "", None) == {"bpm": "N/A", "keyscale": "N/A", "timesignature": "N/A"}
    assert p.build_metas_dict(0, " ", "N/A", -1) == {"bpm": "N/A", "keyscale": "N/A", "timesignature": "N/A"}
    assert p.build_metas_dict(76, "F# minor", "3", 12.34) == {
        "bpm": 76,
        "keyscale": "F# minor",
        "timesignature": "3",
        "duration": "12 seconds",
    }
    assert p.build_metas_dict(60, "C major", "4", "45")["duration"] == "45 seconds"
    user = {"bpm": 100, "keyscale": "N/A", "timesignature": "4"}
    merged = p.merge_lm_metas(user, {"bpm": 90, "keyscale": "D minor", "duration": 30, "language": "de"})
    assert merged == {
        "bpm": 100,
        "keyscale": "D minor",
        "timesignature": "4",
        "duration": 30,
        "caption": None,
        "language": "de",
    }
    assert p.merge_lm_metas(user, None) == user


# ------------------------------------------------------------------------------------------
# CoT block (YAML edge cases)
# ------------------------------------------------------------------------------------------


def test_cot_empty_dict():
    assert p.format_cot({}) == "<think>\n\n</think>"
    assert p.format_cot(None) == "<think>\n\n</think>"
    assert p.format_cot({"bpm": None, "genres": "rock"}) == "<think>\n\n</think>"


def test_cot_sorted_and_normalised():
    meta = {"timesignature": "4/4", "duration": "180", "bpm": 120, "keyscale": "C major", "language": "en"}
    assert p.format_cot(meta) == (
        "<think>\nbpm: 120\nduration: 180\nkeyscale: C major\nlanguage: en\ntimesignature: 4\n</think>"
    )
    assert p.format_cot({"timesignature": "6/8"}) == "<think>\ntimesignature: 6/8\n</think>"
    assert p.format_cot({"bpm": 0}) == "<think>\nbpm: 0\n</think>"
    assert p.format_cot({"bpm": "²"}) == "<think>\nbpm: ²\n</think>"  # isdigit() but not int()


def test_cot_long_caption_folds_at_width_80():
    caption = (
        "An upbeat synth-pop track with bright analog pads, punchy drums and a catchy female vocal hook."
    )
    out = p.format_cot({"caption": caption})
    assert out == (
        "<think>\ncaption: An upbeat synth-pop track with bright analog pads, punchy drums and a catchy\n"
        "  female vocal hook.\n</think>"
    )
    # PyYAML breaks at the first space past column 80, so a line may run a little over 80.
    assert [line[:2] for line in out.split("\n")[2:-1]] == ["  "]
    assert yaml.safe_load(out.split("\n", 1)[1].rsplit("\n", 1)[0]) == {"caption": caption}


def test_cot_quoting_rules():
    assert p.format_cot({"language": "no"}) == "<think>\nlanguage: 'no'\n</think>"
    assert p.format_cot({"language": "yes"}) == "<think>\nlanguage: 'yes'\n</think>"
    assert p.format_cot({"caption": "rock: loud"}) == "<think>\ncaption: 'rock: loud'\n</think>"
    assert p.format_cot({"keyscale": "C# minor"}) == "<think>\nkeyscale: C# minor\n</think>"


def test_cot_keeps_unicode():
    out = p.format_cot({"caption": "中国风流行，古筝与琵琶", "keyscale": "B♭ major", "language": "zh"})
    assert out == "<think>\ncaption: 中国风流行，古筝与琵琶\nkeyscale: B♭ major\nlanguage: zh\n</think>"


def test_user_cot_metadata():
    assert p.user_cot_metadata(None, "", "", None) == {}
    assert p.user_cot_metadata(0, " ", "4", 12.9) == {"bpm": 0, "timesignature": "4", "duration": 12}
    assert p.user_cot_metadata(90, "G major", None, -1) == {"bpm": 90, "keyscale": "G major"}


# ------------------------------------------------------------------------------------------
# LM chat prompts
# ------------------------------------------------------------------------------------------


def _user(prompt: p.ChatPrompt) -> str:
    roles = dict(prompt.messages)
    assert roles["system"].startswith("# Instruction\n") and roles["system"].endswith("\n\n")
    return roles["user"]


def test_phase1_prompts():
    cond = p.build_phase1_prompt("cap", "")
    assert cond.to_dict() == {
        "messages": [
            {"role": "system", "content": LM_SYSTEM},
            {"role": "user", "content": "# Caption\ncap\n\n# Lyric\n\n"},
        ],
        "add_generation_prompt": True,
    }
    assert _user(p.build_phase1_prompt("cap", "la", unconditional=True)) == "# Lyric\nla\n"
    assert (
        _user(p.build_phase1_prompt("cap", "la", unconditional=True, negative_prompt="  ")) == "# Lyric\nla\n"
    )
    custom = p.build_phase1_prompt("cap", "la", unconditional=True, negative_prompt="noisy")
    assert _user(custom) == "# Caption\nnoisy\n\n# Lyric\nla\n"


def test_phase2_newest_layout():
    cot = "<think>\nbpm: 1\n</think>"
    cond = p.build_phase2_prompt("cap", "la", cot)
    assert cond.add_generation_prompt is True
    assert [r for r, _ in cond.messages] == ["system", "user"]
    assert _user(cond) == "# Caption\ncap\n\n# Lyric\nla\n"
    assert cond.assistant_prefix == cot + "\n\n"
    uncond = p.build_phase2_prompt("cap", "la", cot, unconditional=True)
    assert _user(uncond) == "NO USER INPUT"
    assert uncond.assistant_prefix == "<think>\n\n</think>\n\n"
    custom = p.build_phase2_prompt("cap", "la", cot, unconditional=True, negative_prompt="harsh")
    assert _user(custom) == "harsh"
    assert cond.to_dict()["assistant_prefix"] == cot + "\n\n"


def test_phase2_legacy_layout():
    cot = "<think>\nbpm: 1\n</think>"
    cond = p.build_phase2_prompt("cap", "la", cot, legacy=True)
    assert cond.add_generation_prompt is False and cond.assistant_prefix == ""
    assert cond.messages[-1] == ("assistant", cot)
    uncond = p.build_phase2_prompt("cap", "la", cot, legacy=True, unconditional=True)
    assert uncond.messages[1] == ("user", "# Caption\ncap\n\n# Lyric\nla\n")
    assert uncond.messages[-1] == ("assistant", "<think>\n</think>")
    custom = p.build_phase2_prompt("cap", "la", cot, legacy=True, unconditional=True, negative_prompt="bad")
    assert custom.messages[1] == ("user", "# Caption\nbad\n\n# Lyric\nla\n")


def test_simple_format_understand_prompts():
    insp = p.build_inspiration_prompt("a Bengali love song", True)
    assert dict(insp.messages)["system"] == (
        "# Instruction\nExpand the user's input into a more detailed and specific musical description:\n\n"
    )
    assert _user(insp) == "a Bengali love song\n\ninstrumental: true"
    assert _user(p.build_inspiration_prompt("  ", False)) == "NO USER INPUT\n\ninstrumental: false"
    fmt = p.build_format_prompt("", " ")
    assert "Format the user's input" in dict(fmt.messages)["system"]
    assert _user(fmt) == "# Caption\nNO USER INPUT\n\n# Lyric\n[Instrumental]"
    assert _user(p.build_format_prompt("pop", "[Verse]\nhi")) == "# Caption\npop\n\n# Lyric\n[Verse]\nhi"
    und = p.build_understand_prompt("<|audio_code_1|><|audio_code_2|>")
    assert dict(und.messages)["system"] == (
        "# Instruction\nUnderstand the given musical conditions and describe the audio semantics "
        "accordingly:\n\n"
    )
    assert _user(und) == "<|audio_code_1|><|audio_code_2|>"
    assert _user(p.build_understand_prompt("")) == "NO USER INPUT"


class _Recorder:
    def __init__(self, result):
        self.result = result
        self.calls = []

    def apply_chat_template(self, conversation, **kwargs):
        self.calls.append((conversation, kwargs))
        return self.result


def test_render_chat_prompt_calls_template_and_appends_prefix():
    rec = _Recorder("RENDERED")
    prompt = p.build_phase2_prompt("c", "l", "<think>\n</think>")
    assert p.render_chat_prompt(rec, prompt) == "RENDERED<think>\n</think>\n\n"
    conversation, kwargs = rec.calls[0]
    assert conversation == prompt.message_dicts()
    assert kwargs == {"tokenize": False, "add_generation_prompt": True}
    legacy = p.build_phase2_prompt("c", "l", "<think>\n</think>", legacy=True)
    assert p.render_chat_prompt(_Recorder("no newline"), legacy) == "no newline\n"
    assert p.render_chat_prompt(_Recorder("ends\n"), legacy) == "ends\n"


def test_render_chat_prompt_typed_errors():
    with pytest.raises(CheckpointError):
        p.render_chat_prompt(object(), p.build_phase1_prompt("c", "l"))
    with pytest.raises(CheckpointError):
        p.render_chat_prompt(_Recorder([1, 2, 3]), p.build_phase1_prompt("c", "l"))


def test_phase2_from_rendered_phase1():
    cot = "<think>\nbpm: 1\n</think>"
    assert p.phase2_prompt_from_phase1("PROMPT", cot) == "PROMPT" + cot + "\n\n"
    rec = _Recorder("R")
    assert p.phase2_prompt_from_phase1(
        p.render_chat_prompt(rec, p.build_phase1_prompt("c", "l")), cot
    ) == p.render_chat_prompt(rec, p.build_phase2_prompt("c", "l", cot))


# ------------------------------------------------------------------------------------------
# LM output parsing
# ------------------------------------------------------------------------------------------

FULL_OUTPUT = (
    "<think>\nbpm: 120\ncaption: An upbeat synth-pop track with bright analog pads, punchy drums and a catchy\n"
    "  female vocal hook.\nduration: 180\ngenres: synthwave\nkeyscale: C major\nlanguage: en\n"
    "timesignature: 4\n</think>\n\n<|audio_code_5|><|audio_code_63999|><|audio_code_0|><|im_end|>"
)


def test_parse_full_output():
    out = p.parse_lm_output(FULL_OUTPUT)
    assert out.bpm == 120 and out.duration == 180
    assert out.caption == (
        "An upbeat synth-pop track with bright analog pads, punchy drums and a catchy female vocal hook."
    )
    assert (out.genres, out.keyscale, out.language, out.timesignature) == ("synthwave", "C major", "en", "4")
    assert out.audio_codes == "<|audio_code_5|><|audio_code_63999|><|audio_code_0|>"
    assert out.code_ids == (5, 63999, 0)
    assert out.lyrics == "<|audio_code_5|><|audio_code_63999|><|audio_code_0|>"
    assert p.format_cot(out.metadata()) == (
        "<think>\nbpm: 120\ncaption: An upbeat synth-pop track with bright analog pads, punchy drums and a catchy\n"
        "  female vocal hook.\nduration: 180\nkeyscale: C major\nlanguage: en\ntimesignature: 4\n</think>"
    )


def test_parse_missing_fields():
    out = p.parse_lm_output("<think>\nbpm: 90\nkeyscale:\n</think>")
    assert out.bpm == 90
    assert out.keyscale is None and out.caption is None and out.duration is None
    assert out.metadata() == {"bpm": 90}
    assert out.audio_codes == "" and out.lyrics == ""


def test_parse_truncated_block_without_think_end():
    # Phase 1 stops before `</think>`: metadata come from the text before the first code.
    out = p.parse_lm_output("<think>\nbpm: 128\ncaption: dark techno\n  with acid lines\nduration: 2")
    assert (out.bpm, out.caption, out.duration) == (128, "dark techno with acid lines", 2)
    assert out.lyrics == ""
    codes_first = p.parse_lm_output("bpm: 70\n<|audio_code_9|>keyscale: A minor")
    assert codes_first.bpm == 70 and codes_first.keyscale is None and codes_first.code_ids == (9,)


def test_parse_junk_and_non_numeric_values():
    out = p.parse_lm_output(
        "<think>\nBPM: fast\n  ish\n<|endoftext|>\n  <junk>\nduration: 3.5\nmystery: 1\n:\n"
        "language: en\nlanguage: de\n\x00\x85weird\n</think>garbage<|audio_code_-1|><|audio_code_x|>"
    )
    assert out.bpm == "fast\n  ish"  # kept as the stripped string, like upstream
    assert out.duration == "3.5"
    assert out.language == "de"  # the last occurrence wins
    assert out.audio_codes == ""
    assert out.lyrics == "garbage<|audio_code_-1|><|audio_code_x|>"


def test_parse_empty_and_none():
    assert p.parse_lm_output("") == p.LMOutput()
    assert p.parse_lm_output(None) == p.LMOutput()
    assert p.parse_lm_output("<think></think>") == p.LMOutput()


def test_parse_empty_think_falls_back_to_text_before_codes():
    out = p.parse_lm_output("bpm: 99\n<think>\n</think>\n<|audio_code_3|>")
    assert out.bpm == 99 and out.code_ids == (3,)
    assert p.parse_lm_output("<reasoning>\nbpm: 77\n</reasoning>").bpm == 77


def test_parse_keeps_yaml_quotes_literally():
    cot = p.format_cot({"caption": "rock: loud", "language": "no"})
    out = p.parse_lm_output(cot)
    assert out.caption == "'rock: loud'" and out.language == "'no'"


@pytest.mark.parametrize(
    ("tail", "lyrics"),
    [
        ("\n# Lyric\n[Verse]\nla la\n<|im_end|>", "[Verse]\nla la"),
        ("   \n  # Lyrics\n[Chorus]\nyeah<|im_end|>", "# Lyrics\n[Chorus]\nyeah"),  # regex quirk
        ("# lyric\nA\n", "A"),
        ("#  LYRIC  \n\nC<|im_end|>", "C"),
        ("\n# Lyris\nE", "E"),
        ("\n# Lyri|\nD", "D"),
        ("\n# Lyric[Verse]", "# Lyric[Verse]"),
        ("\n# Lyric\n\n\n<|im_end|>", ""),
        ("<|im_end|>", ""),
        ("\nH<|im_end|>tail", "H<|im_end|>tail"),
        ("\nI<|im_end|><|im_end|>", "I<|im_end|>"),
        ("</think>\nsecond<|im_end|>", "</think>\nsecond"),
    ],
)
def test_lyrics_extraction(tail, lyrics):
    assert p.extract_lyrics("<think>x</think>" + tail) == lyrics
    assert p.parse_lm_output("<think>x</think>" + tail).lyrics == lyrics


def test_lyrics_need_think_end():
    assert p.extract_lyrics("no think tag here\n[Verse]\nx") == ""


_FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "<reasoning>", "</reasoning>", "bpm:", "caption:", "duration:", "language:",
     "timesignature:", "keyscale:", "genres:", " ", "\t", "\n", ":", "<", "#", "# Lyric", "Lyrics",
     "<|im_end|>", "<|audio_code_", "|>", "<|audio_code_42|>", "120", "4/4", "²", "١٢", "1_0", "-3",
     "\x00", "\u2028", "\x85", "'", "\"", "é"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=40).map("".join)))
def test_parser_never_raises(text):
    out = p.parse_lm_output(text)
    assert isinstance(out, p.LMOutput)
    for key in ("bpm", "duration"):
        assert isinstance(getattr(out, key), int | str | type(None))
    p.format_cot(out.metadata())  # the parsed dict always re-serialises


# ------------------------------------------------------------------------------------------
# REST sample_query hints
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "language", "instrumental"),
    [
        ("", None, False),
        (None, None, False),
        ("a soft Bengali love song for a quiet evening", "bn", False),
        ("Instrumental jazz", None, True),
        ("piano solo", None, True),
        ("solo", None, True),
        ("Solo guitar", None, False),
        ("EN pop", "en", False),
        ("es: reggaeton", "es", False),
        ("français chanson", "fr", False),
        ("中文 流行", "zh", False),
        ("中文流行", None, False),  # short names need a whitespace/punctuation boundary
        ("日本語のアニメソング", None, False),  # \b needs a non-word character after 語
        ("korean ballad (한국어)", "ko", False),
        ("it's a party", None, False),
        ("hi there", "hi", False),
        ("japanese and english", "en", False),  # table order wins, not position in the query
        ("a pure music meditation", None, True),
        ("pure instrument", None, True),
        ("  Instrumental  ", None, True),
        ("(fr)", None, False),
        ("Bn!", "bn", False),
    ],
)
def test_sample_query_hints(query, language, instrumental):
    assert p.parse_sample_query(query) == (language, instrumental)


def test_resolve_sample_language():
    assert p.resolve_sample_language("fr", "en") == "fr"
    assert p.resolve_sample_language("en", "ja") == "ja"
    assert p.resolve_sample_language("unknown", None) is None
    assert p.resolve_sample_language("", "de") == "de"
    assert p.resolve_sample_language(None, "de") == "de"
