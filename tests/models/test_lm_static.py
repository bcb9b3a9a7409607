"""Static-shape Qwen3 decode runner: exact against transformers, cache reuse, compile, decode loop."""

from __future__ import annotations

import logging

import pytest
import torch

from songstep.errors import SongstepError
from songstep.models.lm import TransformersBackend, head_columns, load_lm, pad_left
from songstep.models.lm_static import StaticQwen3, positions_from_mask
from songstep.prompts import build_phase1_prompt, render_chat_prompt
from songstep.sampling.grammar import CodeConstraint
from songstep.sampling.lm import DecodeRow, SamplingParams, decode
from songstep.testing.tiny_lm import write_tiny_lm

STEPS = 24


def assert_logits_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 1e-5 of the logits' scale (max |logit| ~15 for the tiny LM). An absolute 1e-5 is below
    fp32 noise here: transformers' own cached decode (DynamicCache) differs from its full-sequence
    forward by up to ~2e-5 on these logits (different reduction orders; MKL_CBWR=COMPATIBLE)."""
    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def batch(lm):
    """Two left-padded prompts of different lengths and STEPS teacher-forced continuation tokens."""
    short = lm.encode("<|im_start|>user\nhello there<|im_end|>\n")
    long = lm.encode(
        "<|im_start|>user\nNO USER INPUT and a much longer text here<|im_end|>\n<|im_start|>assistant\n"
    )
    ids, mask = pad_left([short, long], lm.pad_id)
    assert int(mask.sum(1).min()) < ids.shape[1] - 4
    gen = torch.Generator().manual_seed(0)
    return ids, mask, torch.randint(0, lm.backend.vocab_size, (2, STEPS), generator=gen)


def _reference(model, ids, mask, cont):
    """transformers' full-sequence logits at the prefill's last position and every step."""
    full_ids = torch.cat([ids, cont], 1)
    full_mask = torch.cat([mask, torch.ones_like(cont)], 1)
    with torch.inference_mode():
        out = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
    return out.logits.float()[:, ids.shape[1] - 1 :]


def _teacher_forced(backend, ids, mask, cont, head=None, max_new_tokens=None):
    new = cont.shape[1] + 1 if max_new_tokens is None else max_new_tokens
    session, logits = backend.prefill(ids, mask, max_new_tokens=new, head=head)
    out = [logits]
    for t in range(cont.shape[1]):
        out.append(session.step(cont[:, t]))
    return torch.stack(out, 1)


def _static(model, **kw):
    return TransformersBackend(model, static_cache=True, **kw)


@pytest.mark.parametrize("restricted", [False, True])
def test_prefill_and_steps_match_transformers_full_sequence(lm, batch, restricted):
    ids, mask, cont = batch
    head = lm.codes.head_rows() if restricted else None
    want = _reference(lm.model, ids, mask, cont)
    if restricted:
        want = want[..., head_columns(head, lm.backend.vocab_size)]
    assert_logits_close(_teacher_forced(_static(lm.model), ids, mask, cont, head), want)


@pytest.mark.parametrize(
    "overrides",
    [
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}},
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 1024,
                "rope_theta": 1e6,
            }
        },
        {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
        {"attention_bias": True, "num_key_value_heads": 4},
    ],
    ids=["rope-linear", "rope-yarn", "sliding-window", "bias-mha"],
)
def test_config_variants_match_transformers(tmp_path, overrides):
    model = load_lm(write_tiny_lm(tmp_path, n_codes=16, **overrides), device="cpu").model
    if overrides.get("attention_bias"):  # written as zeros by nothing: give the biases values
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    cont = torch.randint(0, model.config.vocab_size, (2, 12), generator=gen)
    want = _reference(model, ids, mask, cont)
    assert_logits_close(_teacher_forced(_static(model), ids, mask, cont), want)


@pytest.mark.parametrize(
    "overrides",
    [{"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}, {"hidden_act": "gelu"}],
)
def test_unsupported_configs_raise(tmp_path, overrides):
    model = load_lm(write_tiny_lm(tmp_path, n_codes=16, **overrides), device="cpu").model
    with pytest.raises(NotImplementedError):
        StaticQwen3(model)


def test_cache_entries_are_reused_and_old_sessions_raise(lm, batch):
    ids, mask, cont = batch
    backend = _static(lm.model)
    first = _teacher_forced(backend, ids, mask, cont)
    second = _teacher_forced(backend, ids, mask, cont)  # same bucket: the cache is reused
    fresh = _teacher_forced(_static(lm.model), ids, mask, cont)
    assert torch.equal(first, second) and torch.equal(first, fresh)
    assert len(backend.runner._cache) == 1

    old, logits = backend.prefill(ids, mask, max_new_tokens=4)
    backend.prefill(ids, mask, max_new_tokens=4)
    with pytest.raises(SongstepError, match="reused"):
        old.step(logits.argmax(-1))
    kept, logits = backend.prefill(ids[:1], mask[:1], max_new_tokens=4)  # another bucket: kept
    backend.prefill(ids, mask, max_new_tokens=600)
    kept.step(logits.argmax(-1))
    backend.prefill(ids, mask, max_new_tokens=900)  # third bucket: evicts the least recent (B=1)
    with pytest.raises(SongstepError, match="reused"):
        kept.step(logits.argmax(-1))
    full, logits = backend.prefill(ids[:1, -3:], mask[:1, -3:], max_new_tokens=256 - 3)
    for _ in range(253):
        logits = full.step(logits.argmax(-1))
    with pytest.raises(SongstepError, match="full"):
        full.step(logits.argmax(-1))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_step_has_no_graph_break_and_matches_eager(lm, batch, caplog):
    """inductor (gcc) compile of the step with fullgraph=True: a graph break or a compile error
    would make the runner fall back to eager (and warn)."""
    ids, mask, cont = batch
    head = lm.codes.head_rows()
    compiled = _static(lm.model, compile=True)
    with caplog.at_level(logging.WARNING, logger="songstep.models.lm_static"):
        got = _teacher_forced(compiled, ids, mask, cont, head)
        again = _teacher_forced(compiled, ids, mask, cont, head)  # cached graph, reused entry
    assert compiled.runner.compiled and not caplog.records
    want = _teacher_forced(_static(lm.model), ids, mask, cont, head)
    assert_logits_close(got, want)
    torch.testing.assert_close(again, got, atol=0, rtol=0)


@pytest.mark.slow
def test_one_compile_serves_every_cache_length(lm, batch):
    """The compiled step is symbolic in the cache length: a 60 s and a 240 s song (other
    buckets) reuse the first compile instead of paying another one each."""
    from torch._dynamo.utils import counters

    ids, mask, cont = batch
    compiled = _static(lm.model, compile=True)
    eager = _static(lm.model)
    torch._dynamo.reset()
    counters.clear()
    for extra in (0, 300, 700):  # three buckets at batch 2
        got = _teacher_forced(compiled, ids, mask, cont[:, :4], max_new_tokens=4 + extra)
        want = _teacher_forced(eager, ids, mask, cont[:, :4], max_new_tokens=4 + extra)
        assert_logits_close(got, want)
    assert len(compiled.runner._cache) == 2 and compiled.runner.compiled
    assert counters["stats"]["unique_graphs"] == 1


class _ReplayGraph:
    """CPU stand-in for a captured CUDA graph: `replay` reruns the captured step into the
    graph's output buffer."""

    def __init__(self, runner, entry, out):
        self.runner, self.entry, self.out = runner, entry, out

    def replay(self):
        self.out.copy_(self.runner._graph_step(self.entry))


def _cpu_capture(runner, entry):
    """`_capture` without CUDA: the same two warm-up steps, then a 'capture' (which, unlike a
    real one, also runs the step: one more write that the next prefill must make harmless)."""
    for _ in range(2):
        runner._graph_step(entry)
    out = runner._graph_step(entry).clone()
    entry.graph, entry.out = _ReplayGraph(runner, entry, out), out


def test_graph_path_state_on_cpu(lm, batch, monkeypatch):
    """Warm-up writes, position/slot bumps and the output buffer of the CUDA-graph path leave
    the results unchanged (two generations on one entry, then another bucket)."""
    ids, mask, cont = batch
    head = lm.codes.head_rows()
    monkeypatch.setattr(StaticQwen3, "_capture", _cpu_capture)
    graphed = _static(lm.model)
    graphed.runner.cuda_graph = True
    want = _teacher_forced(_static(lm.model), ids, mask, cont, head)
    for _ in range(2):
        assert torch.equal(_teacher_forced(graphed, ids, mask, cont, head), want)
    assert torch.equal(
        _teacher_forced(graphed, ids[1:], mask[1:], cont[1:]),
        _teacher_forced(_static(lm.model), ids[1:], mask[1:], cont[1:]),
    )
    assert len(graphed.runner._cache) == 2
    assert all(isinstance(e.graph, _ReplayGraph) for e in graphed.runner._cache.values())


def test_capture_failure_falls_back_to_eager_graph_then_eager(lm, batch, monkeypatch, caplog):
    ids, mask, cont = batch
    tried = []

    def broken(runner, entry):
        tried.append(runner.compiled)
        raise RuntimeError("capture failed")

    monkeypatch.setattr(StaticQwen3, "_capture", broken)
    backend = _static(lm.model, compile=True)
    backend.runner.cuda_graph = True
    with caplog.at_level(logging.WARNING, logger="songstep.models.lm_static"):
        got = _teacher_forced(backend, ids, mask, cont)
    assert tried == [True, False] and len(caplog.records) == 2
    assert not backend.runner.compiled and not backend.runner.cuda_graph
    assert torch.equal(got, _teacher_forced(_static(lm.model), ids, mask, cont))


def _decode_both(lm, rows_fn, params, **kw):
    out = []
    for backend in (lm.backend, _static(lm.model)):
        res = decode(backend, rows_fn(), params, eos_id=lm.eos_id, pad_id=lm.pad_id, **kw)
        out.append([(r.tokens, r.eos) for r in res])
    return out


def test_decode_loop_gives_the_same_tokens_as_the_default_runner(lm):
    from songstep.sampling.grammar import GrammarVocab, MetadataConstraint, MetadataSpec

    pytest.importorskip("llguidance")
    vocab = GrammarVocab.from_tokenizer(lm.tokenizer, lm.backend.vocab_size)
    prompt = lm.encode(render_chat_prompt(lm.tokenizer, build_phase1_prompt("a bright pop song", "la la")))

    def cot_rows():
        spec = MetadataSpec(caption_max_tokens=24)
        return [
            DecodeRow(
                prompt, constraint=MetadataConstraint(vocab, spec), generator=torch.Generator().manual_seed(s)
            )
            for s in (3, 4)
        ]

    cot = _decode_both(lm, cot_rows, SamplingParams(), max_new_tokens=160)
    assert cot[0] == cot[1] and all(eos for _, eos in cot[0])

    head = lm.codes.head_rows()
    columns = head_columns(head, lm.backend.vocab_size)
    codes = range(lm.codes.first_id, lm.codes.first_id + lm.codes.valid)

    def code_rows():
        return [
            DecodeRow(
                prompt,
                uncond_prompt=prompt[:7],
                constraint=CodeConstraint(codes, lm.eos_id, 30 + s, columns=columns),
                generator=torch.Generator().manual_seed(s),
            )
            for s in (0, 5)
        ]

    params = SamplingParams(cfg_scale=2.0, top_k=50, repetition_penalty=1.1)
    coded = _decode_both(lm, code_rows, params, max_new_tokens=45, head=head)
    assert coded[0] == coded[1] and [len(t) for t, _ in coded[0]] == [30, 35]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_graph_step_matches_eager(tmp_path):
    """On CUDA the static runner compiles the step and captures it in a CUDA graph per bucket.
    fp32: same logits as transformers and the same sampled tokens; bf16: no further from the
    fp32 logits than the eager bf16 runner."""
    folder = write_tiny_lm(tmp_path)
    fast = load_lm(folder, device="cuda", dtype=torch.float32)
    ref = load_lm(folder, device="cuda", dtype=torch.float32, static_cache=False)
    assert fast.backend.static_cache and fast.backend.compile and fast.backend.cuda_graph
    ids, mask = pad_left([fast.encode("<|im_start|>user\nhi<|im_end|>\n"), fast.encode("NO USER INPUT x")], 0)
    cont = torch.randint(0, fast.backend.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    for head in (None, fast.codes.head_rows()):  # two generations on one entry: the graph is replayed
        got = _teacher_forced(fast.backend, ids, mask, cont, head)
        want = _teacher_forced(ref.backend, ids, mask, cont, head)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    runner = fast.backend.runner
    assert runner.compiled and runner.cuda_graph
    assert all(entry.graph is not None for entry in runner._cache.values())
    columns = head_columns(fast.codes.head_rows(), fast.backend.vocab_size, "cuda")
    codes = range(fast.codes.first_id, fast.codes.first_id + fast.codes.valid)

    def rows():
        return [
            DecodeRow(
                [5, 6, 7, 8],
                uncond_prompt=[5, 6],
                constraint=CodeConstraint(codes, fast.eos_id, 40, columns=columns),
                generator=torch.Generator("cuda").manual_seed(1),
            )
        ]

    params = SamplingParams(cfg_scale=2.0)
    tokens = [
        [
            r.tokens
            for r in decode(
                b,
                rows(),
                params,
                eos_id=fast.eos_id,
                pad_id=0,
                max_new_tokens=50,
                head=fast.codes.head_rows(),
            )
        ]
        for b in (fast.backend, ref.backend)
    ]
    assert tokens[0] == tokens[1]

    bf16 = load_lm(folder, device="cuda", dtype=torch.bfloat16)
    eager = load_lm(
        folder, device="cuda", dtype=torch.bfloat16, static_cache=True, compile=False, cuda_graph=False
    )
    exact = _teacher_forced(ref.backend, ids, mask, cont)
    err_fast = (_teacher_forced(bf16.backend, ids, mask, cont) - exact).abs().max()
    err_eager = (_teacher_forced(eager.backend, ids, mask, cont) - exact).abs().max()
    assert bf16.backend.runner.compiled and bf16.backend.runner.cuda_graph
    assert err_fast <= 2 * err_eager + 1e-2, (err_fast, err_eager)


def test_release_frees_the_cache_and_stales_sessions(lm, batch):
    ids, mask, cont = batch
    backend = _static(lm.model)
    assert backend.release() == 0  # nothing allocated yet
    session, _ = backend.prefill(ids, mask, max_new_tokens=4)
    entry = backend.runner._cache[(2, 256)]
    expected = sum(t.numel() * t.element_size() for t in (*entry.keys, *entry.values))
    assert backend.release() == expected and not backend.runner._cache
    with pytest.raises(SongstepError, match="reused by a later prefill"):
        session.step(cont[:, 0])
    want = _teacher_forced(_static(lm.model), ids, mask, cont[:, :3])
    torch.testing.assert_close(_teacher_forced(backend, ids, mask, cont[:, :3]), want, atol=0, rtol=0)
