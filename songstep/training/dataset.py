"""Dataset builder: a folder of songs → a reviewable manifest → fp32 safetensors shards.

Input folder: audio files (wav, flac, mp3, ogg, opus, aiff), each with optional
`<stem>.txt` (lyrics) and `<stem>.json` (caption, lyrics, bpm, keyscale, timesignature, language,
instrumental), and an optional `metadata.csv` with a `file` column and the same fields.

Output folder:
    manifest.json            one entry per song: the labels used, and its status; edit and re-run
    items/<id>.safetensors   target_latents [T, 64] (VAE posterior mean), text_hidden_states,
                             text_attention_mask, lyric_hidden_states, lyric_attention_mask; fp32
                             (upstream's fp16 text-encoder preprocessing produced NaN adapters)
    report.json              every skipped file and why

Resumable: an item whose shard exists with the same label fingerprint is skipped. Bad files
(unreadable, shorter than the minimum, lyrics or metadata without audio) are reported and skipped;
the build fails with a clear error only when nothing usable is left.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from songstep import audio, prompts
from songstep.constants import HOP_LENGTH, SAMPLE_RATE
from songstep.errors import InvalidAudio, InvalidRequest, SongstepError
from songstep.tasks import TASKS

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REPORT = "report.json"
ITEMS = "items"
FORMAT = "songstep-dataset-1"
MIN_SECONDS = 1.0
MAX_SECONDS = 240.0  # longer songs are cut to their first 240 s (upstream's preprocessing limit)
LABEL_FIELDS = ("caption", "lyrics", "bpm", "keyscale", "timesignature", "language", "instrumental")


@dataclass
class Item:
    id: str
    audio: str  # path relative to the audio folder
    caption: str = ""
    lyrics: str = ""
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str = "unknown"
    instrumental: bool = False
    seconds: float = 0.0
    labelled_by: str = "files"
    status: str = "pending"  # pending | done | skipped

    def fingerprint(self) -> str:
        labels = {k: getattr(self, k) for k in (*LABEL_FIELDS, "audio")}
        return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]

    def prompts(self) -> tuple[str, str]:
        """(caption prompt, lyric prompt) as the DiT sees them for text2music."""
        lyrics = self.lyrics or (prompts.INSTRUMENTAL_LYRICS if self.instrumental else "")
        metas = prompts.build_metas_dict(self.bpm, self.keyscale, self.timesignature, int(self.seconds) or None)
        return prompts.build_dit_inputs(TASKS["text2music"].instruction(), self.caption, lyrics, metas, self.language)


@dataclass
class Report:
    skipped: list[dict[str, str]] = field(default_factory=list)
    done: int = 0
    reused: int = 0

    def skip(self, file: str, reason: str) -> None:
        log.warning("skipping %s: %s", file, reason)
        self.skipped.append({"file": file, "reason": reason})


def _item_id(rel: str) -> str:
    stem = re.sub(r"\W+", "_", Path(rel).stem).strip("_")[:48] or "song"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _labels_from_csv(folder: Path, report: Report) -> dict[str, dict[str, Any]]:
    path = folder / "metadata.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        report.skip(path.name, f"unreadable metadata.csv ({e})")
        return {}
    out = {}
    for row in rows:
        name = row.get("file") or row.get("audio") or row.get("filename")
        if name:
            out[Path(name).name] = {k: v for k, v in row.items() if k in LABEL_FIELDS and v not in (None, "")}
    return out


def _coerce(labels: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in labels.items() if k in LABEL_FIELDS and v is not None}
    if "bpm" in out:
        try:
            out["bpm"] = int(float(out["bpm"]))
        except (TypeError, ValueError):
            out.pop("bpm")
    if "instrumental" in out and isinstance(out["instrumental"], str):
        out["instrumental"] = out["instrumental"].strip().lower() in ("1", "true", "yes", "y")
    for k in ("caption", "lyrics", "keyscale", "timesignature", "language"):
        if k in out:
            out[k] = str(out[k])
    return out


def _probe(path: Path, min_seconds: float) -> tuple[float | None, str | None]:
    """(seconds, None) or (None, reason)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        return None, f"unreadable audio ({e})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < min_seconds:
        return None, f"audio is {seconds:.2f} s, shorter than the minimum {min_seconds:g} s"
    return seconds, None


def _song_items(folder: Path, files: list[Path], min_seconds: float, report: Report) -> list[Item]:
    csv_labels = _labels_from_csv(folder, report)
    items = []
    for path in files:
        seconds, problem = _probe(path, min_seconds)
        if problem:
            report.skip(path.name, problem)
            continue
        labels: dict[str, Any] = dict(csv_labels.get(path.name, {}))
        meta = path.with_suffix(".json")
        if meta.is_file():
            try:
                labels.update(json.loads(meta.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                report.skip(meta.name, f"unreadable metadata ({e}); labels from it ignored")
        lyrics = path.with_suffix(".txt")
        if lyrics.is_file():
            labels["lyrics"] = lyrics.read_text(encoding="utf-8", errors="replace").strip()
        rel = path.relative_to(folder).as_posix()
        items.append(Item(_item_id(rel), rel, seconds=round(min(seconds, MAX_SECONDS), 3), **_coerce(labels)))
    return items


def scan(folder: str | Path, *, min_seconds: float = MIN_SECONDS) -> tuple[list[Item], Report]:
    """Songs of a folder with their labels, and the report of what was skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidRequest(f"{folder}: not a folder")
    report = Report()
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in entries if p.suffix.lower().lstrip(".") in audio.READABLE_EXTENSIONS]
    stems = {p.stem for p in files}
    for p in entries:
        if p.suffix.lower() in (".txt", ".json") and p.stem not in stems:
            report.skip(p.name, f"{'lyrics' if p.suffix == '.txt' else 'metadata'} without audio (no {p.stem}.<audio>)")
    if not files:
        raise InvalidRequest(
            f"{folder}: no audio files ({', '.join(audio.READABLE_EXTENSIONS)})"
            + (f"; also skipped: {', '.join(s['file'] for s in report.skipped)}" if report.skipped else "")
        )
    return _song_items(folder, files, min_seconds, report), report


# -- manifest ---------------------------------------------------------------------------------------
def write_manifest(out: Path, audio_dir: Path, items: list[Item]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "audio_dir": str(audio_dir.resolve()), "items": [dataclasses.asdict(i) for i in items]}
    path = out / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(out: str | Path) -> tuple[Path, list[Item]]:
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(Item)}
        items = [Item(**{k: v for k, v in row.items() if k in names}) for row in data["items"]]
        return Path(data["audio_dir"]), items
    except FileNotFoundError as e:
        raise InvalidRequest(f"{out}: no {MANIFEST} (build the dataset first)") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidRequest(f"{path}: unreadable manifest ({e})") from e


def auto_label(pipe, items: list[Item], audio_dir: Path, report: Report, *, only_unlabelled: bool = True) -> None:
    """Fill missing labels from the planner's `understand` (caption, metas, lyrics when none)."""
    for item in items:
        if only_unlabelled and item.caption:
            continue
        try:
            desc = pipe.understand(audio_dir / item.audio, seed=0)
        except SongstepError as e:
            report.skip(item.audio, f"auto-labelling failed ({e}); kept its own labels")
            continue
        found = _coerce({k: v for k, v in desc.to_dict().items() if v not in (None, "")})
        for k, v in found.items():
            if k == "lyrics" and (item.lyrics or item.instrumental):
                continue
            if not getattr(item, k) or getattr(item, k) == "unknown":
                setattr(item, k, v)
        item.labelled_by = "lm"


# -- preprocessing ------------------------------------------------------------------------------------
def shard_path(out: Path, item: Item) -> Path:
    return out / ITEMS / f"{item.id}.safetensors"


def _is_done(path: Path, item: Item) -> bool:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint") == item.fingerprint()
    except (SafetensorError, OSError):
        return False


def encode_item(components, item: Item, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fp32 tensors of one song (components loaded in fp32)."""
    wave = wave[:, : int(MAX_SECONDS * SAMPLE_RATE)]
    if wave.shape[1] < HOP_LENGTH:
        raise InvalidAudio(f"{item.audio}: shorter than one latent frame")
    caption_prompt, lyric_prompt = item.prompts()
    with torch.no_grad():
        with components.on_device("vae"):
            latents = components.vae.encode(wave[None], sample=False)[0]
        with components.on_device("text"):
            text, text_mask = components.text.encode_captions([caption_prompt])
            lyr, lyr_mask = components.text.embed_lyrics([lyric_prompt])
    tensors = {
        "target_latents": latents,
        "text_hidden_states": text[0],
        "text_attention_mask": text_mask[0],
        "lyric_hidden_states": lyr[0],
        "lyric_attention_mask": lyr_mask[0],
    }
    out = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.bool().cpu().contiguous()
           for k, v in tensors.items()}
    for k, v in out.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise InvalidAudio(f"{item.audio}: {k} is not finite")
    return out


def preprocess(components, items: list[Item], audio_dir: Path, out: Path, report: Report,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Write each pending item's shard; bad items are reported and skipped."""
    from safetensors.torch import save_file

    (out / ITEMS).mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        path = shard_path(out, item)
        if item.status == "skipped":
            continue
        if _is_done(path, item):
            item.status, report.reused = "done", report.reused + 1
            continue
        try:
            wave = audio.load_audio(audio_dir / item.audio, max_seconds=None)
            tensors = encode_item(components, item, wave)
        except (SongstepError, OSError, ValueError, RuntimeError) as e:
            item.status = "skipped"
            report.skip(item.audio, str(e))
            continue
        meta = {"format": FORMAT, "id": item.id, "fingerprint": item.fingerprint(),
                "labels": json.dumps({k: getattr(item, k) for k in LABEL_FIELDS}, ensure_ascii=False)}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        item.status, report.done = "done", report.done + 1
        if progress:
            progress(i + 1, len(items))


def build(pipe, audio_dir: str | Path, out: str | Path, *, min_seconds: float = MIN_SECONDS, label: bool = False,
          rescan: bool = False, manifest_only: bool = False, progress=None) -> Report:
    """Scan (or reuse the reviewed manifest), optionally auto-label, then preprocess."""
    audio_dir, out = Path(audio_dir), Path(out)
    if label and getattr(pipe, "planner", None) is None:
        raise InvalidRequest("auto-labelling needs a planner LM (--lm 1.7B, 0.6B, 4B or an LM folder)")
    report = Report()
    if (out / MANIFEST).is_file() and not rescan:
        manifest_dir, items = read_manifest(out)
        audio_dir = manifest_dir if manifest_dir.is_dir() else audio_dir
        log.info("using the existing manifest (%d items); --rescan to rebuild it", len(items))
    else:
        items, report = scan(audio_dir, min_seconds=min_seconds)
        if label:
            auto_label(pipe, items, audio_dir, report)
        write_manifest(out, audio_dir, items)
    if not manifest_only:
        preprocess(pipe.components, items, audio_dir, out, report, progress)
        write_manifest(out, audio_dir, items)
    (out / REPORT).write_text(json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False), encoding="utf-8")
    if not manifest_only and not any(i.status == "done" for i in items):
        raise InvalidRequest(f"{audio_dir}: no usable songs; see {out / REPORT}")
    return report


# -- reading a built dataset ------------------------------------------------------------------------------
def load_dataset(folder: str | Path) -> list[tuple[Item, dict[str, torch.Tensor]]]:
    """Every done item with its tensors (the songs of a LoRA dataset fit in memory)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    _, items = read_manifest(folder)
    out = []
    for item in items:
        if item.status != "done":
            continue
        path = shard_path(folder, item)
        if not path.is_file():
            raise InvalidRequest(f"{path}: missing shard (re-run `songstep dataset build`)")
        out.append((item, load_file(str(path))))
    if not out:
        raise InvalidRequest(f"{folder}: the dataset has no preprocessed songs")
    return out
