"""GGUF export of Qwen2/2.5, Qwen3, Llama 3, Mistral, Gemma 2, Gemma 3 and Phi-3: tiny random models of each, built
from transformers' configs, checked against llama.cpp's own converter (bit-identical tensors, the same architecture
keys) and run through llama.cpp (logits of transformers' forward), with the trained chat template and stop tokens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.templates import jinja_chat_template
from camelid.modelfiles.gguf import export_gguf

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

CONVERTER = Path(__file__).parent / "llama_cpp_convert" / "convert_hf_to_gguf.py"
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
# name -> (transformers config class, model class, extra config, tokenizer: smollm2 BPE or a SentencePiece one)
ARCHS = {
    # transformers 5 loads a qwen2/qwen3 checkpoint's tokenizer.json as Qwen2Tokenizer, whose own pre-tokenizer on
    # SmolLM2's vocabulary is no tokenizer llama.cpp knows: these get the SentencePiece one (Qwen2Model.set_vocab
    # reads tokenizer.model first)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False), "spm"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=True), "spm"),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}, tie_word_embeddings=False), "bpe"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None, tie_word_embeddings=False), "bpe"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                                         attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
               "spm"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=16, sliding_window=8,
                                                             query_pre_attn_scalar=16), "bpe"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(tie_word_embeddings=False, pad_token_id=0), "spm"),
}
GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "llama3": "llama", "mistral": "llama", "gemma2": "gemma2",
             "gemma3": "gemma3", "phi3": "phi3"}
# max |logit difference| allowed (measured: 2e-7..5e-6; Gemma 2.4e-4 and 4.1e-4: its embedding scale and
# soft-capping are computed in another order)
TOLERANCE = {"gemma2": 1e-3, "gemma3": 1e-3}
PROMPT = "The quick brown fox jumps over the lazy dog, 123 times!"


def _bpe_tokenizer(ckpt: Path, eos: str | None) -> None:
    from camelid.models.checkpoint import embedded_hf_dir

    base = embedded_hf_dir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / f).is_file():
            shutil.copy(base / f, ckpt / f)
    if eos:  # a base model's EOS (as Llama 3's <|end_of_text|>) with chat turns ending in another token
        conf = json.loads((ckpt / "tokenizer_config.json").read_text())
        (ckpt / "tokenizer_config.json").write_text(json.dumps({**conf, "eos_token": eos}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint per architecture (sharp attention: a wrong Q/K layout shows in the logits)."""
    import transformers
    from transformers import AutoTokenizer

    from tests.modelfiles.test_export import _llama2_style_checkpoint

    root = tmp_path_factory.mktemp("archs")
    spm = _llama2_style_checkpoint(root / "spm", with_spm_file=True)  # tokenizer.model + tokenizer.json
    out = {}
    for name, (config_cls, model_cls, extra, tok_kind) in ARCHS.items():
        ckpt = root / name
        ckpt.mkdir()
        if tok_kind == "spm":
            for f in spm.iterdir():
                if f.name.startswith("tokenizer"):
                    shutil.copy(f, ckpt / f.name)
        else:
            _bpe_tokenizer(ckpt, "<|endoftext|>" if name == "llama3" else None)
        tok = AutoTokenizer.from_pretrained(ckpt)
        config = getattr(transformers, config_cls)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id, **{**COMMON, **extra})
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if any(k in pname for k in ("q_proj", "k_proj", "qkv_proj")):
                    p.mul_(30)
                elif pname.endswith("norm.weight"):  # not all ones (Gemma: zeros), so the norm layout shows
                    p.add_(torch.randn(p.shape) * 0.1)
        model.save_pretrained(ckpt)
        out[name] = ckpt
    return out


def _reference(ckpt: Path, out: Path, outtype: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on the same checkpoint (with its own gguf-py, which it puts on sys.path)."""
    proc = subprocess.run([sys.executable, str(CONVERTER), str(ckpt), "--outfile", str(out), "--outtype", outtype],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "PYTHONPATH")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


@pytest.mark.slow  # the reference converter starts torch and transformers per run (~30-50 s each on 2 cores)
@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_gguf_tensors_are_bit_identical_to_llama_cpps_converter(checkpoints, tmp_path, name, outtype):
    ckpt = checkpoints[name]
    ours = gguf.GGUFReader(str(export_gguf(f"hf:{ckpt}", tmp_path / "ours.gguf", outtype, template="chatml")))
    ref = gguf.GGUFReader(str(_reference(ckpt, tmp_path / "ref.gguf", outtype)))
    assert _field(ours, "general.architecture") == _field(ref, "general.architecture") == GGUF_ARCH[name]
    mine, theirs = {t.name: t for t in ours.tensors}, {t.name: t for t in ref.tensors}
    assert sorted(mine) == sorted(theirs)
    for tname, t in theirs.items():
        m = mine[tname]
        assert (m.tensor_type, list(m.shape)) == (t.tensor_type, list(t.shape)), tname
        assert m.data.tobytes() == t.data.tobytes(), tname
    arch = GGUF_ARCH[name]
    keys = {k for k in ref.fields if k.startswith(f"{arch}.")}
    assert keys == {k for k in ours.fields if k.startswith(f"{arch}.")}
    for k in keys:
        assert _field(ours, k) == pytest.approx(_field(ref, k)), k
    for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "general.file_type"):
        assert _field(ours, k) == _field(ref, k), k


@pytest.mark.slow  # with the checkpoints fixture (7 models, a SentencePiece training): ~40 s before the first
@pytest.mark.parametrize("name", list(ARCHS))
def test_gguf_gives_transformers_logits_through_llama_cpp(checkpoints, tmp_path, name):
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = checkpoints[name]
    out = export_gguf(f"hf:{ckpt}", tmp_path / "m.gguf", "f32")
    ids = AutoTokenizer.from_pretrained(ckpt)(PROMPT).input_ids[:24]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    try:
        llm = Llama(str(out), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    except ValueError:
        if name == "phi3":
            pytest.skip("llama.cpp (llama-cpp-python 0.3.36) stops loading this tiny Phi-3 at 'error loading model "
                        "vocabulary: unordered_map::at' (its Phi-3 vocabulary loader on the test's 400-piece "
                        "SentencePiece tokenizer); llama.cpp's own converter's GGUF of it fails the same way. Its "
                        "tensors and keys are checked against that converter above")
        raise
    try:
        llm.eval(ids)
        got = llm.scores[: len(ids)]
    finally:
        llm.close()
    err = float(abs(got - want).max())
    print(f"{name}: max |llama.cpp - transformers| logit = {err:.2e} (logit range {abs(want).max():.1f})")
    assert err < TOLERANCE.get(name, 1e-4), err  # f32 weights and KV cache: float32 rounding differences only


@pytest.mark.slow  # writing SmolLM2's 49k-token vocabulary and merges: ~30 s per export on 2 shared cores
@pytest.mark.parametrize("name", ["llama3", "gemma3", "phi3"])
def test_gguf_carries_the_trained_chat_template_and_its_stop_tokens(checkpoints, tmp_path, name):
    from transformers import AutoTokenizer

    ckpt = checkpoints[name]
    tok = AutoTokenizer.from_pretrained(ckpt)
    template = "chatml" if name != "phi3" else "llama-2"
    out = export_gguf(f"hf:{ckpt}", tmp_path / "m.gguf", "f16", template=template)
    r = gguf.GGUFReader(str(out))
    assert _field(r, "tokenizer.chat_template") == jinja_chat_template(template)
    assert _field(r, "camelid.template") == template
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    if name == "llama3":  # EOS <|endoftext|>, turns end with <|im_end|>: llama.cpp stops on the end-of-turn token
        assert tok.eos_token == "<|endoftext|>"
        assert _field(r, "tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    else:  # the template's end token is EOS itself (SmolLM2's <|im_end|>, Llama 2's </s>): no separate EOT
        assert tok.eos_token in ("<|im_end|>", "</s>") and "tokenizer.ggml.eot_token_id" not in r.fields
    assert out.with_suffix(".Modelfile").is_file()


UNSUPPORTED = [("GPT2LMHeadModel", "architecture GPT2LMHeadModel is not supported"),
               ("Gemma3ForConditionalGeneration", "architecture Gemma3ForConditionalGeneration is not supported")]


@pytest.mark.parametrize("arch,message", UNSUPPORTED, ids=[a for a, _ in UNSUPPORTED])
def test_an_unsupported_architecture_is_refused_in_one_line_before_any_weights_are_read(tmp_path, capsys, arch,
                                                                                        message):
    from camelid.models.checkpoint import embedded_hf_dir

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in embedded_hf_dir().iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, ckpt / f.name)
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)  # garbage: reading it would fail with another error
    conf = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**conf, "architectures": [arch]}))
    assert main(["export", f"hf:{ckpt}", "--gguf", "-o", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Qwen3ForCausalLM" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.gguf").exists()
