"""Planner LM speed: CoT phase + the code phase of a 240 s song (1 200 codes, CFG 2.0).

    python benchmarks/planner.py --tiny                 # CPU, tiny random LM (seconds), HF runner
    python benchmarks/planner.py --tiny --runner static # CPU, our static runner (eager)
    python benchmarks/planner.py --config 1.7B          # CUDA, random Qwen3-1.7B-shaped weights, bf16,
                                                        # static runner: compiled step in a CUDA graph,
                                                        # code-row head
    python benchmarks/planner.py --config 1.7B --runner hf                # transformers + DynamicCache
    python benchmarks/planner.py --config 0.6B --no-cuda-graph --full-head   # other baselines
    python benchmarks/planner.py --config 1.7B --runner vllm              # the vLLM backend (dummy weights)
    python benchmarks/planner.py --tiny --runner vllm   # CPU, vLLM's CPU build
(the tiny LM has head_dim 32 for every runner: vLLM's CPU attention kernels need ≥ 32)

Prints one JSON object: tokens/s and ms/token per phase, and the memory-bandwidth floor of the
code phase: bytes read per step (weights, with only the code rows + EOS of the head, plus the
average KV cache) / `--bandwidth` (default 3.35e12 B/s, H100 SXM), and floor / measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from songstep.models.lm import PlannerLM, TransformersBackend, find_audio_codes, head_columns, load_lm
from songstep.prompts import (
    build_phase1_prompt,
    build_phase2_prompt,
    format_cot,
    parse_lm_output,
    render_chat_prompt,
)
from songstep.sampling.grammar import CodeConstraint, GrammarVocab, MetadataConstraint, MetadataSpec
from songstep.sampling.lm import DecodeRow, SamplingParams, decode
from songstep.testing.tiny_lm import tiny_qwen3_config, write_tiny_lm

# Qwen3 base shapes (hidden, layers, heads, kv heads, intermediate); head_dim 128, tied embeddings.
SHAPES = {
    "0.6B": (1024, 28, 16, 8, 3072),
    "1.7B": (2048, 28, 16, 8, 6144),
    "4B": (2560, 36, 32, 8, 9728),
}
log = logging.getLogger("planner-bench")
REAL_VOCAB = 217_204  # 151 669 Qwen3 tokens + 65 535 audio-code tokens
CAPTION = "An upbeat synth-pop track with bright analog pads, punchy drums and a catchy female vocal hook."
LYRICS = "[Verse]\nNeon lights on the avenue\n[Chorus]\nWe run, we run, into the blue\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_full_size_lm(name: str, tokenizer_dir: Path, **runner) -> PlannerLM:
    """A Qwen3-`name`-shaped model with random bf16 weights on CUDA and the tiny tokenizer;
    `runner` goes to `TransformersBackend` (static_cache, compile, cuda_graph)."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    codes = find_audio_codes(tokenizer)
    config = _full_size_config(name, tokenizer)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    backend = TransformersBackend(model, **runner)
    return PlannerLM(tokenizer=tokenizer, model=model, backend=backend, codes=codes, path=tokenizer_dir)


VLLM_TINY = dict(head_dim=32, hidden_size=64, num_attention_heads=2, num_key_value_heads=1)  # CPU kernels: head_dim ≥ 32


def _full_size_config(name: str, tokenizer):
    hidden, layers, heads, kv, inter = SHAPES[name]
    codes = find_audio_codes(tokenizer)
    return tiny_qwen3_config(
        REAL_VOCAB, codes.eos_id, tokenizer.pad_token_id, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter, head_dim=128,
        max_position_embeddings=40960,
    )


def vllm_lm(folder: Path, config_name: str | None) -> PlannerLM:
    """The vLLM backend over `folder` (a tiny LM), or over a Qwen3-`config_name`-shaped config
    written next to the tiny tokenizer with vLLM's random ("dummy") weights, bf16."""
    import shutil

    from transformers import AutoTokenizer

    from songstep.models.lm_vllm import VLLMBackend

    tokenizer = AutoTokenizer.from_pretrained(folder)
    options: dict = {"max_rows": 2, "max_model_len": 4096, "dtype": torch.float32}
    if config_name is not None:
        full = folder.parent / f"qwen3-{config_name}"
        full.mkdir(exist_ok=True)
        for item in folder.iterdir():
            if item.name.startswith("tokenizer") or item.name == "generation_config.json":
                shutil.copy(item, full / item.name)
        config = _full_size_config(config_name, tokenizer)
        config.dtype = torch.bfloat16
        config.save_pretrained(full)
        folder, options = full, {**options, "load_format": "dummy", "dtype": torch.bfloat16}
    backend = VLLMBackend(folder, **options)
    return PlannerLM(tokenizer=tokenizer, model=None, backend=backend, codes=find_audio_codes(tokenizer), path=folder)


def run_cot(lm: PlannerLM, vocab: GrammarVocab, caption_tokens: int, seed: int = 0):
    prompt = lm.encode(render_chat_prompt(lm.tokenizer, build_phase1_prompt(CAPTION, LYRICS)))
    spec = MetadataSpec(caption_max_tokens=caption_tokens, max_duration=600)
    gen = torch.Generator(lm.backend.device).manual_seed(seed)
    row = DecodeRow(prompt, constraint=MetadataConstraint(vocab, spec), generator=gen)
    start = time.perf_counter()
    result = decode(
        lm.backend, [row], SamplingParams(), eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=1024
    )[0]
    _sync(lm.backend.device)
    seconds = time.perf_counter() - start
    text = lm.tokenizer.decode(result.tokens)
    return text, len(result.tokens) + int(result.eos), seconds


def run_codes(lm: PlannerLM, cot_text: str, n_codes: int, max_new: int, restricted: bool, seed: int = 0):
    meta = parse_lm_output(cot_text).metadata()
    meta["duration"] = 240
    cot = format_cot(meta)
    cond = lm.encode(render_chat_prompt(lm.tokenizer, build_phase2_prompt(CAPTION, LYRICS, cot)))
    uncond = lm.encode(
        render_chat_prompt(lm.tokenizer, build_phase2_prompt(CAPTION, LYRICS, cot, unconditional=True))
    )
    head = lm.codes.head_rows() if restricted else None
    columns = head_columns(head, lm.backend.vocab_size)
    code_ids = range(lm.codes.first_id, lm.codes.first_id + lm.codes.valid)
    constraint = CodeConstraint(code_ids, lm.eos_id, n_codes, columns=columns)
    gen = torch.Generator(lm.backend.device).manual_seed(seed)
    row = DecodeRow(cond, uncond_prompt=uncond, constraint=constraint, generator=gen)
    params = SamplingParams(cfg_scale=2.0)
    start = time.perf_counter()
    result = decode(
        lm.backend, [row], params, eos_id=lm.eos_id, pad_id=lm.pad_id, max_new_tokens=max_new, head=head
    )[0]
    _sync(lm.backend.device)
    seconds = time.perf_counter() - start
    assert len(result.tokens) == n_codes and result.eos, (len(result.tokens), result.eos)
    return len(result.tokens) + 1, seconds, len(cond), len(uncond)


def bandwidth_floor(lm: PlannerLM, restricted: bool, context: float, rows: int, bandwidth: float) -> dict:
    """Bytes one code-phase step must read: the weights once (head: code rows + EOS only, or the
    full vocab; the input embedding table is read one row per token), plus K and V of `context` tokens for each of the `rows` sequences."""
    model = lm.model if lm.model is not None else _meta_model(lm)
    cfg = model.config
    elem = next(model.parameters()).element_size()
    embed = model.get_input_embeddings().weight
    body = sum(p.numel() for n, p in model.named_parameters() if p is not embed and "lm_head" not in n)
    head_rows = (lm.codes.valid + 1) if restricted else cfg.vocab_size
    weights = (body + head_rows * cfg.hidden_size) * elem
    kv = rows * context * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * elem
    return {
        "weight_bytes_per_step": weights,
        "kv_bytes_per_step": int(kv),
        "floor_ms_weights": weights / bandwidth * 1e3,
        "floor_ms_weights_kv": (weights + kv) / bandwidth * 1e3,
    }


def _meta_model(lm: PlannerLM):
    """The model's shapes without weights (the vLLM backend keeps its own)."""
    from transformers import AutoConfig, Qwen3ForCausalLM

    config = AutoConfig.from_pretrained(lm.path)
    with torch.device("meta"):
        return Qwen3ForCausalLM(config).to(config.dtype or torch.float32)


def _phase(tokens: int, seconds: float) -> dict:
    return {
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 2),
        "ms_per_token": round(seconds / tokens * 1e3, 4),
    }


def _parse(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random LM (CPU unless --device)")
    parser.add_argument("--device", default="cpu", help="device of the tiny LM")
    parser.add_argument(
        "--runner",
        choices=("static", "hf", "vllm"),
        help="static: our static-cache Qwen3 step (default on CUDA); hf: transformers + DynamicCache "
        "(default on CPU); vllm: the vLLM backend (full head)",
    )
    parser.add_argument("--config", choices=sorted(SHAPES), default="1.7B", help="full-size shape (CUDA)")
    parser.add_argument("--codes", type=int, default=1200, help="codes to generate (240 s × 5 Hz)")
    parser.add_argument("--caption-tokens", type=int, default=64, help="caption cap of the CoT phase")
    parser.add_argument("--bandwidth", type=float, default=3.35e12, help="HBM bytes/s (H100 SXM: 3.35e12)")
    parser.add_argument("--no-compile", action="store_true", help="static runner: eager step")
    parser.add_argument("--no-cuda-graph", action="store_true", help="static runner: no CUDA graph")
    parser.add_argument("--full-head", action="store_true", help="code phase over the full vocabulary head")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU intra-op threads (tiny tensors: 1 is fastest)"
    )
    return parser.parse_args(argv)


def _runner_kwargs(args) -> dict:
    static = None if args.runner is None else args.runner == "static"
    if args.runner is None and not args.tiny:
        static = True
    return {
        "static_cache": static,
        "compile": False if args.no_compile else None,
        "cuda_graph": False if args.no_cuda_graph else None,
    }


def _build(args, folder: Path) -> PlannerLM:
    if args.runner == "vllm":
        return vllm_lm(folder, None if args.tiny else args.config)
    if args.tiny:
        return load_lm(folder, device=args.device, **_runner_kwargs(args))
    if not torch.cuda.is_available():
        raise SystemExit("full-size configs need CUDA; use --tiny on CPU")
    return random_full_size_lm(args.config, folder, **_runner_kwargs(args))


def _measure(args, lm: PlannerLM, restricted: bool) -> dict:
    """Each timed phase runs after a short warm-up on the same (batch, cache-length bucket), so
    compiles and CUDA-graph captures (the static runner on CUDA) stay out of the timings."""
    vocab = GrammarVocab.from_tokenizer(lm.tokenizer, lm.backend.vocab_size)
    max_new = args.codes + 10
    start = time.perf_counter()
    run_cot(lm, vocab, min(8, args.caption_tokens), seed=1)
    warmup_s = time.perf_counter() - start
    log.info("CoT warm-up done in %.1f s", warmup_s)
    cot_text, cot_tokens, cot_s = run_cot(lm, vocab, args.caption_tokens)
    log.info("CoT: %d tokens in %.2f s", cot_tokens, cot_s)
    start = time.perf_counter()
    run_codes(lm, cot_text, min(16, args.codes), max_new, restricted, seed=1)  # the same prompts
    warmup_s += time.perf_counter() - start
    log.info("code warm-up done (warm-ups: %.1f s)", warmup_s)
    n, codes_s, cond_len, uncond_len = run_codes(lm, cot_text, args.codes, max_new, restricted)
    log.info("codes: %d tokens in %.2f s", n, codes_s)
    context = (cond_len + uncond_len) / 2 + args.codes / 2
    floor = bandwidth_floor(lm, restricted, context, rows=2, bandwidth=args.bandwidth)
    codes = _phase(n, codes_s)
    return {
        "warmup_s": round(warmup_s, 2),
        "cot": _phase(cot_tokens, cot_s),
        "codes": codes,
        "total_s": round(cot_s + codes_s, 3),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in floor.items()},
        "floor_ratio_weights": round(floor["floor_ms_weights"] / codes["ms_per_token"], 4),
        "floor_ratio_weights_kv": round(floor["floor_ms_weights_kv"] / codes["ms_per_token"], 4),
    }


def _runner_state(lm: PlannerLM) -> dict:
    """What actually ran (compile and graph capture fall back to eager on failure)."""
    backend = lm.backend
    if lm.model is None:  # vLLM: its own compile / CUDA-graph settings
        return {}
    if not backend.static_cache:
        return {"compile": False, "cuda_graph": False}
    runner = backend.runner
    return {"compile": runner.compiled, "cuda_graph": runner.cuda_graph}


def main(argv=None) -> dict:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        lm = _build(args, write_tiny_lm(Path(tmp) / "lm", **VLLM_TINY))  # one tiny shape for every runner
        load_s = time.perf_counter() - start
        log.info("model ready in %.1f s", load_s)
        restricted = not args.full_head and lm.backend.capabilities.restricted_head  # vLLM: always the full head
        measured = _measure(args, lm, restricted)
        dtype = _meta_model(lm).dtype if lm.model is None else lm.model.dtype
    report = {
        "model": "tiny" if args.tiny else f"qwen3-{args.config}-random",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "runner": args.runner or ("static" if lm.backend.static_cache else "hf"),
        **_runner_state(lm),
        "head": "codes+eos" if restricted else "full",
        "cfg_scale": 2.0,
        "load_s": round(load_s, 2),
        **measured,
        "bandwidth": args.bandwidth,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
