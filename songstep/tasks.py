"""Tasks are rows in a table (principle 3): each row carries its instruction template, the inputs
it needs, how its source latents and masks are built, and which variants allow it.

Adding a task is one `TaskSpec` row plus one test; nothing outside this module branches on a
task's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from songstep.constants import TRACK_NAMES
from songstep.errors import InvalidRequest

T2M_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
COVER_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"


@dataclass(frozen=True)
class TaskSpec:
    """One task. Template fields: `{TRACK_NAME}` (one track) or `{TRACK_CLASSES}` (several)."""

    name: str
    instruction_template: str
    instruction_default: str  # used when no track is given
    track_mode: str = "none"  # "none" | "one" | "many"
    needs_source: bool = False
    needs_turbo_off: bool = False  # upstream gates lego/extract/complete on `not is_turbo`
    is_cover: bool = False  # source replaced by FSQ hints inside prepare_condition
    source: str = "silence"  # "silence" | "audio" | "audio_window_silenced"
    window: bool = False  # chunk mask = a time window (repaint, lego) instead of all ones
    injects_source: bool = False  # repaint preservation (injection + crossfade + splice)
    length_from_source: bool = False
    codes_task: str | None = None  # with LM/user audio codes this row runs as that task instead
    keeps_level: bool = False  # the result keeps the source's level (no peak normalisation by default)
    aliases: tuple[str, ...] = ()

    def instruction(self, tracks: Sequence[str] | str | None = None) -> str:
        names = _normalise_tracks(tracks)
        if self.track_mode == "none" or not names:
            return self.instruction_default
        if self.track_mode == "one":
            if len(names) != 1:
                raise InvalidRequest(f"task {self.name!r} takes exactly one track, got {len(names)}")
            return self.instruction_template.replace("{TRACK_NAME}", names[0].upper())
        return self.instruction_template.replace("{TRACK_CLASSES}", " | ".join(n.upper() for n in names))


def _normalise_tracks(tracks: Sequence[str] | str | None) -> list[str]:
    if tracks is None:
        return []
    if isinstance(tracks, str):
        tracks = [t for t in tracks.split(",")]
    names = [t.strip().lower() for t in tracks if t and t.strip()]
    for n in names:
        if n not in TRACK_NAMES:
            raise InvalidRequest(f"unknown track name {n!r}; choose from: {', '.join(TRACK_NAMES)}")
    return names


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("text2music", T2M_INSTRUCTION, T2M_INSTRUCTION, source="silence", codes_task="cover"),
        TaskSpec(
            "cover",
            COVER_INSTRUCTION,
            COVER_INSTRUCTION,
            needs_source=True,
            is_cover=True,
            source="audio",
            length_from_source=True,
        ),
        TaskSpec(
            "repaint",
            "Repaint the mask area based on the given conditions:",
            "Repaint the mask area based on the given conditions:",
            needs_source=True,
            source="audio_window_silenced",
            window=True,
            injects_source=True,
            keeps_level=True,
        ),
        TaskSpec(
            "lego",
            "Generate the {TRACK_NAME} track based on the audio context:",
            "Generate the track based on the audio context:",
            track_mode="one",
            needs_source=True,
            needs_turbo_off=True,
            source="audio",
            window=True,
            keeps_level=True,
            aliases=("add_layer", "add-layer"),
        ),
        TaskSpec(
            "extract",
            "Extract the {TRACK_NAME} track from the audio:",
            "Extract the track from the audio:",
            track_mode="one",
            needs_source=True,
            needs_turbo_off=True,
            source="audio",
            length_from_source=True,
            keeps_level=True,
        ),
        TaskSpec(
            "complete",
            "Complete the input track with {TRACK_CLASSES}:",
            "Complete the input track:",
            track_mode="many",
            needs_source=True,
            needs_turbo_off=True,
            source="audio",
            length_from_source=True,
            keeps_level=True,
        ),
    )
}


def with_codes(spec: TaskSpec) -> TaskSpec:
    """The row that actually runs when audio codes condition the DiT (text2music → cover:
    the hints replace the silent source and the cover instruction is used)."""
    return TASKS[spec.codes_task] if spec.codes_task else spec


def get_task(name: str) -> TaskSpec:
    key = name.strip().lower()
    for spec in TASKS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise InvalidRequest(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
