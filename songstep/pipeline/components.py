"""Loading every component a pipeline needs from a checkpoint root or a hub repository.

Folders as upstream lays them out: `acestep-v15-<variant>/` (DiT + `silence_latent.pt`), `vae/`,
`Qwen3-Embedding-0.6B/`, `acestep-5Hz-lm-<size>/`. Or the diffusers layout (what diffusers'
`convert_ace_step_to_diffusers.py` and `AceStepPipeline.save_pretrained` write): `model_index.json`,
the DiT in `transformer/`, `condition_encoder/` (with the silence latent), `audio_tokenizer/`,
`audio_token_detokenizer/`, then `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`; one DiT per
repository, whose variant comes from its config (`model_version`, `is_turbo`), and no planner LM. A local directory is used as it is (its files are
checked structurally when loaded, not against the official checksums, so fine-tuned or tiny
checkpoints work); a hub id is downloaded into `root` with pinned revisions and checksums.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from songstep.config import VARIANTS, DiTConfig
from songstep.devices import resolve_device
from songstep.errors import CheckpointError, DownloadError, InvalidRequest, ModelNotFound
from songstep.loading import diffusers_map, hub, inventory
from songstep.loading.checkpoint import default_dtype, load_dit
from songstep.loading.preflight import format_size
from songstep.models.dit import DiTModel
from songstep.models.text import TextEncoder
from songstep.models.vae import VAE, load_silence_latent

log = logging.getLogger(__name__)
status = logging.getLogger("songstep.status")  # one line per stage; the CLI shows these on stderr

SILENCE_FILE = "silence_latent.pt"


@dataclass
class Components:
    dit: DiTModel
    vae: VAE
    text: TextEncoder
    silence: torch.Tensor  # [N, 64] in the DiT dtype, on the DiT device
    variant: str
    folders: dict[str, Path]
    device: torch.device
    offload: bool = False

    def to(self, device: torch.device) -> None:
        """Move the DiT, VAE, text encoder and silence latent to `device` (with offload on, the
        idle parts stay on the CPU and only the compute device changes)."""
        if not self.offload:
            for module in (self.dit, self.vae.model, self.text.model):
                module.to(device)
        self.silence = self.silence.to(device)
        self.device = device

    @contextlib.contextmanager
    def on_device(self, name: str):
        """With offload on, move one component to the compute device for a stage and back."""
        module = {"dit": self.dit, "vae": self.vae.model, "text": self.text.model}[name]
        if not self.offload or self.device.type == "cpu":
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            torch.cuda.empty_cache()


def resolve_folder(model: str | Path, component: str, root: str | Path, offline: bool) -> Path:
    local = Path(str(model)).expanduser()
    verify = "none" if local.is_dir() else "size"
    return hub.resolve(model, component, root=root, offline=offline, verify=verify)


def load_components(
    model: str | Path,
    *,
    variant: str = "turbo",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    offload: bool = False,
    root: str | Path = "checkpoints",
    offline: bool = False,
    compile: bool | str = False,
    quantize: str | None = None,
) -> Components:
    """The DiT of `variant`, its silence latent, the VAE and the text encoder from `model` (a
    checkpoints root, official or diffusers layout, or a hub repository). A diffusers repository
    holds one DiT: its own variant is used (a different `variant` is logged). `compile`: True
    (inductor), a `torch.compile` mode ("reduce-overhead": CUDA graphs) or a backend name runs the
    DiT decoder compiled at bucketed lengths (one compile per 30 s bucket and batch size);
    `quantize="int8"`: torchao int8 weight-only DiT linears."""
    if variant not in VARIANTS:
        raise InvalidRequest(f"unknown variant {variant!r}; choose from: {', '.join(VARIANTS)}")
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    park = torch.device("cpu") if offload else device
    layout = diffusers_folders(model) or diffusers_folders(fetch_diffusers_repo(str(model), root, offline))
    if layout is not None:
        variant, folders = layout.variant_for(variant), layout.folders
        silence = layout.silence()
    else:
        folders = {name: resolve_folder(model, name, root, offline) for name in (variant, "vae", "text-encoder")}
        silence = load_silence_latent(folders[variant] / SILENCE_FILE)[0]
    announce_load(f"{variant} DiT", folders[variant])
    dit = load_dit(folders[variant], device=park, dtype=dtype)
    silence = silence.to(device=device, dtype=dtype)
    announce_load("VAE", folders["vae"])
    vae = VAE.from_pretrained(folders["vae"], device=park, dtype=dtype)
    announce_load("text encoder", folders["text-encoder"])
    text = TextEncoder.from_pretrained(folders["text-encoder"], device=park, dtype=dtype,
                                       tokenizer_path=folders.get("tokenizer"))
    if text.hidden_size != dit.config.text_hidden_dim:
        raise InvalidRequest(
            f"text encoder width {text.hidden_size} does not match the DiT's text_hidden_dim "
            f"{dit.config.text_hidden_dim}"
        )
    optimize_dit(dit, compile=compile, quantize=quantize)
    log.info("loaded %s on %s (%s)%s", variant, device, dtype, ", offloading idle parts" if offload else "")
    return Components(dit, vae, text, silence, variant, folders, device, offload)


def variant_of(config: DiTConfig) -> str:
    """The variant a DiT config describes: its `model_version` when that names one (`xl_turbo` →
    "xl-turbo"), else from its size and `is_turbo`."""
    version = str(config.model_version or "").lower().replace("_", "-")
    if version in VARIANTS:
        return version
    return ("xl-" if config.is_xl else "") + ("turbo" if config.is_turbo else "base")


@dataclass(frozen=True)
class DiffusersFolders:
    """A local diffusers-layout repository and where each of our components lives in it."""

    root: Path
    config: DiTConfig  # the DiT's, read from the four component configs

    @property
    def variant(self) -> str:
        return variant_of(self.config)

    @property
    def folders(self) -> dict[str, Path]:
        return {self.variant: self.root, "vae": self.root / "vae", "text-encoder": self.root / "text_encoder",
                "tokenizer": self.root / "tokenizer"}

    def variant_for(self, asked: str) -> str:
        if asked != self.variant:
            log.info("%s holds the %s DiT (diffusers layout, one DiT per repository); using it, not %s",
                     self.root, self.variant, asked)
        return self.variant

    def silence(self) -> torch.Tensor:
        """The silence latent baked into condition_encoder/, [N, 64] float32."""
        value = diffusers_map.read_silence_latent(self.root)
        if value is None:
            raise CheckpointError(f"{self.root}: condition_encoder/ holds no silence_latent (convert with it baked in)")
        return value[0]


DIFFUSERS_FILES = ("model_index.json", "*/config.json", "*/*.safetensors", "*/*.safetensors.index.json",
                   "tokenizer/*", "scheduler/*")


def fetch_diffusers_repo(repo_id: str, root: str | Path, offline: bool) -> Path | None:
    """A hub repository in the diffusers layout (one with a `model_index.json`), its JSON and
    safetensors files downloaded into `root/<owner>--<name>` (offline: that copy, if complete).
    None for a local path, a repository of the official table, or one without `model_index.json`
    (the official resolver then reports what is missing). Files are not checked against pinned
    checksums: the table pins only the official layout."""
    official = {c.repo_id for c in hub.COMPONENTS.values()}
    if repo_id in official or repo_id.count("/") != 1 or Path(repo_id).expanduser().exists():
        return None
    target = Path(root).expanduser() / repo_id.replace("/", "--")
    if offline:
        return target if (target / diffusers_map.MODEL_INDEX).is_file() else None
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        if not HfApi().file_exists(repo_id, diffusers_map.MODEL_INDEX):
            return None
        snapshot_download(repo_id, local_dir=str(target), allow_patterns=list(DIFFUSERS_FILES))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        log.info("%s: not read as a diffusers repository (%s)", repo_id, exc)
        return None
    return target


def diffusers_folders(model: str | Path | None) -> DiffusersFolders | None:
    """The diffusers layout of `model` when it is a local folder with a `model_index.json` (else
    None: an official root, a hub id or None)."""
    if model is None:
        return None
    local = Path(str(model)).expanduser()
    if not (local / diffusers_map.MODEL_INDEX).is_file():
        return None
    config, _, _ = diffusers_map.plan(local)
    return DiffusersFolders(local, config)


def describe_model(model: str | Path, *, root: str | Path = "checkpoints", offline: bool = True) -> dict[str, object]:
    """What `songstep info --model` shows: the layout, the DiT variants found and their folders, the
    other components' folders, and for the official layout each component's state (local folder used
    as it is, or a checked download), family and weights digest. Reads configs and safetensors
    headers only (no weights, no download)."""
    layout = diffusers_folders(model)
    if layout is not None:
        cfg = layout.config
        dit = {"xl": cfg.is_xl, "turbo": cfg.is_turbo, "model_version": cfg.model_version,
               "timbre_fix_frame": cfg.timbre_fix_frame}
        return {"model": str(model), "layout": "diffusers", "variants": {layout.variant: str(layout.root)},
                "dit": dit, "folders": {k: str(v) for k, v in layout.folders.items() if k != layout.variant}}
    out = _components(model, root=root, offline=offline)
    local = Path(str(model)).expanduser()
    if not local.is_dir():
        return {**out, "layout": "hub", "root": str(root)}
    found = {}
    for name in (*VARIANTS, "vae", "text-encoder", *(f"lm-{s}" for s in LM_SIZES)):
        try:
            found[name] = str(hub.find_component_folder(local, hub.COMPONENTS[name]))
        except ModelNotFound:
            continue
    variants = {k: v for k, v in found.items() if k in VARIANTS}
    return {**out, "layout": "official", "variants": variants,
            "folders": {k: v for k, v in found.items() if k not in VARIANTS}}


def optimize_dit(dit: DiTModel, *, compile: bool | str = False, quantize: str | None = None) -> None:
    if quantize is not None:
        from songstep.models.quantize import quantize_dit

        quantize_dit(dit, quantize)
    if compile:
        from songstep.models.dit_compile import compile_decoder, parse_compile

        backend, mode = parse_compile(compile)
        compile_decoder(dit.decoder, backend, mode=mode)


def weights_size(folder: str | Path) -> int:
    """Bytes of a component folder's weight files (what loading it reads)."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.pt")
               for f in Path(folder).glob(pattern) if f.is_file())


def announce_load(what: str, folder: str | Path) -> None:
    """The status line before a component loads: what, its size and where from."""
    status.info("loading %s (%s) from %s", what, format_size(weights_size(folder)), folder)


LM_SIZES = ("0.6B", "1.7B", "4B")


def resolve_lm(
    model: str | Path, lm: str | Path | None, default_size: str | None, root: str | Path, offline: bool
) -> Path | None:
    """The planner LM folder for `lm`: "auto" → `default_size` (the GPU tier's; None: no LM),
    "none"/None → no LM, "0.6B"/"1.7B"/"4B" → `acestep-5Hz-lm-<size>` of `model`, else a folder.

    An explicit choice that cannot be found raises `ModelNotFound`; "auto" logs and returns None."""
    choice = "none" if lm is None or lm is False else str(lm).strip()
    if choice.lower() == "auto":
        if default_size is None:
            return None
        try:
            return resolve_folder(model, f"lm-{default_size}", root, offline)
        except (ModelNotFound, DownloadError) as exc:
            log.warning("no %s planner LM available (%s); running without the LM", default_size, exc)
            return None
    if choice.lower() in ("none", "off", "false", ""):
        return None
    size = choice.removeprefix("lm-")
    if size in LM_SIZES:
        return resolve_folder(model, f"lm-{size}", root, offline)
    folder = Path(choice).expanduser()
    if (folder / "config.json").is_file():
        return folder
    raise ModelNotFound(f"no planner LM {lm!r}: use auto, none, {', '.join(LM_SIZES)} or an LM folder")


def weights_digest(folder: str | Path) -> str:
    """A fingerprint of a component folder's weights: sha256 over each `*.safetensors` file's name,
    size and header (every tensor's name, dtype, shape and byte offsets). It changes when any tensor
    is added, removed, reshaped or the file is rewritten at another size; it is read in
    milliseconds, unlike a hash of gigabytes of weights."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = f.read(min(size, 100_000_000))
        h.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0" + header)
    return h.hexdigest()[:16]




def _components(model: str | Path, *, root: str | Path = "checkpoints", offline: bool = True) -> dict:
    """Each component's folder (or why it is missing), whether it is a local folder (used as it is)
    or a hub download (checked against pinned checksums), and the DiT variants with their family."""
    from songstep.config import DiTConfig, family

    local = Path(str(model)).expanduser().is_dir()
    out: dict = {"model": str(model), "kind": "local folder (used as it is)" if local else "hub repo (pinned, checksummed)",
                 "components": {}}
    for name in (*VARIANTS, "vae", "text-encoder", *(f"lm-{s}" for s in LM_SIZES)):
        try:
            folder = resolve_folder(model, name, root, offline=True if local else offline)
        except (ModelNotFound, DownloadError) as exc:
            if name in ("vae", "text-encoder", "turbo"):
                out["components"][name] = {"missing": str(exc).splitlines()[0]}
            continue
        entry: dict = {"folder": str(folder)}
        if not local:  # the hub id's folder under root: our download, or the user's own copy
            entry.update({k: v for k, v in (inventory.folder_state(root, hub.COMPONENTS[name]) or {}).items() if k != "folder"})
        if name in VARIANTS:
            try:
                entry["family"] = family(DiTConfig.from_file(folder / "config.json"))
                entry["digest"] = weights_digest(folder)
            except Exception as exc:  # noqa: BLE001 - reported, not raised: info describes what it finds
                entry["error"] = str(exc).splitlines()[0]
        out["components"][name] = entry
    return out
