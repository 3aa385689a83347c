"""camelid export: merged checkpoints, GGUF files llama.cpp answers with, chat formats and Ollama Modelfiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.templates import TEMPLATES, TemplateError, jinja_renderer, get_template
from camelid.core.tokenize import encode
from camelid.core.templates import jinja_chat_template
from camelid.modelfiles.gguf import export_gguf, modelfile
from camelid.modelfiles.merge import merge_adapter

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def base_dir() -> Path:
    from camelid.models.checkpoint import embedded_hf_dir

    return embedded_hf_dir()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_dir) -> Path:
    """A run directory as the trainer writes it: a LoRA adapter (non-zero B) + tokenizer + camelid.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("runs") / "lora-run"
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(run)
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (run / "adapter_config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base_dir / f, run / f)
    (run / "camelid.json").write_text(json.dumps({"template": "chatml", "base_model": "embedded", "method": "lora"}))
    return run


def _logits(model, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_merged_checkpoint_gives_the_adapter_models_logits(lora_run, base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = merge_adapter(lora_run, tmp_path / "merged")
    ids = list(range(100, 140))
    merged = _logits(AutoModelForCausalLM.from_pretrained(out), ids)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    plain = _logits(base, ids)
    adapted = _logits(PeftModel.from_pretrained(base, lora_run), ids)
    assert (adapted - plain).abs().max() > 1e-2  # the adapter changes the model: the merge is not trivial
    assert (merged - adapted).abs().max() < 1e-4
    run = json.loads((out / "camelid.json").read_text())
    assert run["method"] == "merged" and run["merged_from"]["method"] == "lora" and run["template"] == "chatml"
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp directory left behind


def test_merge_refuses_a_full_model_and_an_existing_output(base_dir, tmp_path, capsys):
    assert main(["export", f"hf:{base_dir}", "--merge", "-o", str(tmp_path / "m")]) == 1
    assert "nothing to merge" in capsys.readouterr().err
    assert main(["export", f"hf:{base_dir}"]) == 1
    assert "--merge or --gguf" in capsys.readouterr().err


def _gguf_field(reader, key):
    f = reader.fields[key]
    return f.contents()


def test_gguf_of_the_embedded_checkpoint_answers_like_transformers(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid.models import Sampling, embedded_gguf, load_model

    out = export_gguf(base_dir, tmp_path / "smol.f16.gguf", "f16", template="chatml")
    # the tokenizer written from tokenizer.json is the one llama.cpp's converter wrote for SmolLM2
    ours, ref = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(embedded_gguf()))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token",
                "llama.rope.freq_base", "llama.attention.head_count_kv", "llama.context_length"):
        assert _gguf_field(ours, key) == _gguf_field(ref, key), key
    assert _gguf_field(ours, "tokenizer.chat_template") == jinja_chat_template("chatml")

    tok = AutoTokenizer.from_pretrained(base_dir)
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    ids, _ = encode(tok, get_template("chatml"), messages, add_generation_prompt=True)
    hf = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    model = load_model(f"gguf:{out}", n_ctx=512)
    try:
        got = []
        for t in model.llm.generate(ids, temp=0.0, top_k=1):
            got.append(t)
            if len(got) == 20:
                break
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), 20)
        assert same >= 16, (tok.decode(got), tok.decode(want))  # f16 vs fp32: greedy paths agree
        reply = model.chat([{"role": "user", "content": "What is the capital of France?"}],
                           Sampling(temperature=0, max_tokens=100))
        assert reply.finish_reason == "stop" and reply.completion_tokens < 100 and "Paris" in reply.text
        assert "<|im_end|>" not in reply.text
    finally:
        model.close()
    text = out.with_suffix(".Modelfile").read_text()
    assert f"FROM ./{out.name}" in text and 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.slow
def test_cli_exports_a_lora_run_to_q8_0_gguf_with_a_modelfile(lora_run):
    from camelid.models import Sampling, load_model

    assert main(["export", str(lora_run), "--gguf", "--outtype", "q8_0"]) == 0
    out = lora_run / "lora-run.q8_0.gguf"
    assert out.is_file() and (lora_run / "lora-run.q8_0.Modelfile").is_file()
    assert not [p for p in lora_run.iterdir() if p.name.startswith(".")]  # temp merge removed
    reader = gguf.GGUFReader(str(out))
    assert _gguf_field(reader, "camelid.template") == "chatml"
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)
    model = load_model(f"gguf:{out}", n_ctx=512)
    try:
        reply = model.chat([{"role": "user", "content": "Say hello."}], Sampling(temperature=0, max_tokens=60))
        assert reply.text.strip()
    finally:
        model.close()


def _llama2_style_checkpoint(d: Path, with_spm_file: bool) -> Path:
    """A tiny Llama-2-style model: SentencePiece BPE vocab with byte fallback, GQA, untied output, sharp attention."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d.mkdir(parents=True)
    corpus = ("The quick brown fox jumps over the lazy dog. Hello world! Numbers 123 and 456. "
              "안녕하세요 세계, 반갑습니다. ") * 200
    (d / "corpus.txt").write_text("\n".join(corpus[i:i + 200] for i in range(0, len(corpus), 200)))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []  # as transformers' SentencePiece converter builds them: splits of each piece, in piece order
    for piece, pid in vocab.items():
        if not (sp.is_control(pid) or sp.is_unknown(pid) or sp.is_byte(pid)):
            merges += [(pid, vocab[piece[:k]], piece[:k], piece[k:]) for k in range(1, len(piece))
                       if piece[:k] in vocab and piece[k:] in vocab]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in sorted(merges)], unk_token="<unk>",
                              byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    ckpt = d / "ckpt"
    ckpt.mkdir()
    tk.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                            "eos_token": "</s>", "unk_token": "<unk>"}))
    if with_spm_file:
        shutil.copy(d / "sp.model", ckpt / "tokenizer.model")
    tok = AutoTokenizer.from_pretrained(ckpt)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1,
                                         eos_token_id=2, rms_norm_eps=1e-5))
    with torch.no_grad():  # sharp attention, so that a wrong Q/K layout (rotary pairs) shows in the logits
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(30)
    model.save_pretrained(ckpt)
    return ckpt


@pytest.mark.parametrize("with_spm_file", [True, False], ids=["tokenizer.model", "tokenizer.json"])
def test_gguf_of_a_llama2_style_model_has_the_same_tokens_and_logits(tmp_path, with_spm_file):
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = _llama2_style_checkpoint(tmp_path / "m", with_spm_file)
    out = export_gguf(f"hf:{ckpt}", tmp_path / "tiny.gguf", "f32", template="llama-2")
    tok = AutoTokenizer.from_pretrained(ckpt)
    llm = Llama(str(out), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    try:
        for text in ["Hello world", "The quick brown fox, 123!", "안녕하세요 세계", "emoji 🦙 x"]:
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == tok(text).input_ids, text
        ids = tok("The quick brown fox jumps over the lazy dog").input_ids
        with torch.no_grad():
            want = AutoModelForCausalLM.from_pretrained(ckpt)(torch.tensor([ids])).logits[0].numpy()
        llm.eval(ids)
        got = llm.scores[: len(ids)]
        assert abs(got - want).max() < 1e-4
    finally:
        llm.close()
    assert "[INST]" in _gguf_field(gguf.GGUFReader(str(out)), "tokenizer.chat_template")


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "Sum", "input": "1 2"}, {"role": "assistant", "content": "3"}],
    [{"role": "system", "content": "Be nice."}, {"role": "user", "content": " a b "},
     {"role": "assistant", "content": " ok "}, {"role": "user", "content": "more"}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "q2", "input": "ctx"}, {"role": "assistant", "content": "a2"}],
]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_jinja_chat_templates_render_what_the_shipped_templates_render(name):
    render = jinja_renderer(jinja_chat_template(name), "<s>", "</s>")
    checked = 0
    for conv in CONVERSATIONS:
        for gen in (False, True):
            if name == "self-instruct" and conv[-1]["role"] == "assistant":
                continue  # training varies the format per example; the chat_template holds the canonical one
            try:
                want = get_template(name).render(conv, gen, "<s>", "</s>")
            except TemplateError:
                continue
            assert render(conv, gen) == want, (conv, gen)
            checked += 1
    assert checked >= 2


def test_modelfile_carries_template_stops_and_default_system():
    vicuna = modelfile("m.gguf", get_template("vicuna_v1.1"), "<s>", "</s>")
    assert "FROM ./m.gguf" in vicuna and 'SYSTEM """A chat between a curious user' in vicuna
    assert 'PARAMETER stop "</s>"' in vicuna and 'PARAMETER stop "USER:"' in vicuna
    assert "ASSISTANT: {{ .Content }}</s>" in vicuna
    alpaca = modelfile("m.gguf", get_template("alpaca"), "<s>", "<|im_end|>")
    assert 'PARAMETER stop "### Instruction:"' in alpaca and "{{ .Content }}<|im_end|>" in alpaca
    assert "SYSTEM" not in alpaca


@pytest.fixture()
def run_on_unreadable_base(lora_run, base_dir, tmp_path) -> Path:
    """The LoRA run, its base's weights replaced by garbage: any command that starts merging fails on them, so an
    argument error that names the argument proves the arguments were checked before the (expensive) merge."""
    base = tmp_path / "base"
    base.mkdir()
    for f in base_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, base / f.name)
    (base / "model.safetensors").write_bytes(b"\0" * 64)
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    conf = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": str(base)}))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    (tmp_path / "taken.gguf").write_text("x")
    return run


BAD_EXPORTS = [  # (arguments, what the one-line error names)
    (["--gguf", "--outtype", "q4_k_m"], "--outtype 'q4_k_m'"),
    (["--gguf", "--outtype", "Q8_0"], "--outtype 'Q8_0'"),
    (["--gguf", "--outtype", ""], "--outtype ''"),
    (["--gguf", "--template", "no-such"], "unknown template 'no-such'"),
    (["--gguf", "-o", "{tmp}/model.bin"], "must end in .gguf"),
    (["--gguf", "-o", "{tmp}/taken.gguf"], "already exists"),
    (["--merge", "--outtype", "f16"], "--outtype applies to --gguf only"),
    (["--merge", "--template", "alpaca"], "--template applies to --gguf only"),
    (["--merge", "-o", "{tmp}/taken"], "already exists"),
    (["--merge", "--gguf"], "choose one of --merge or --gguf"),
]


@pytest.mark.parametrize("argv,message", BAD_EXPORTS, ids=[" ".join(a) for a, _ in BAD_EXPORTS])
def test_export_refuses_bad_arguments_before_reading_any_weights(run_on_unreadable_base, tmp_path, capsys, argv,
                                                                 message):
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["export", str(run_on_unreadable_base), *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and message in err, err
    assert len(err.splitlines()) == 1 and "safetensors" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp left behind
    # and with good arguments the same command does reach the weights (so the fixture would have caught a merge)
    if argv == ["--gguf", "--outtype", "q4_k_m"]:
        with pytest.raises(Exception, match="(?i)header"):  # safetensors' own error on the garbage weights
            main(["export", str(run_on_unreadable_base), "--gguf", "-o", str(tmp_path / "ok.gguf")])
