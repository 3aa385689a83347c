"""camelid weights diff/apply: bit-exact XOR deltas, wrong bases refused, memory near one shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import CamelidError, sha256_file
from camelid.core.io import parse_size
from camelid.modelfiles.delta import apply_delta, diff_weights, verify_same

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402


def _save(directory: Path, tensors: dict, shard_bytes: int | None = None) -> Path:
    """A checkpoint dir with config.json; sharded transformers-style when shard_bytes is given."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "test"}))
    if shard_bytes is None:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        if current and size + t.numel() * t.element_size() > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * t.element_size()
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@pytest.fixture(scope="module")
def embedded_pair(tmp_path_factory):
    """The embedded fp32 checkpoint and a copy with some tensors perturbed (a stand-in for a fine-tune)."""
    from camelid.models.checkpoint import embedded_hf_dir

    base = embedded_hf_dir()
    state = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        state[name] = state[name] + 1e-3 * torch.randn(state[name].shape, generator=g)
    tuned = _save(tmp_path_factory.mktemp("tuned") / "tuned", state)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (tuned / f).write_bytes((base / f).read_bytes())
    del state
    return base, tuned


def test_diff_then_apply_rebuilds_the_tuned_embedded_weights_bit_for_bit(embedded_pair, tmp_path):
    base, tuned = embedded_pair
    assert main(["weights", "diff", "embedded", str(tuned), "-o", str(tmp_path / "delta")]) == 0
    meta = json.loads((tmp_path / "delta" / "delta.json").read_text())
    assert meta["encoding"] == "xor" and meta["tensors"]["model.norm.weight"]["base_sha256"]
    assert (tmp_path / "delta" / "tokenizer.json").is_file()
    assert main(["weights", "apply", f"hf:{base}", str(tmp_path / "delta"), "-o", str(tmp_path / "target")]) == 0
    assert verify_same(tuned, tmp_path / "target") is None
    assert verify_same(base, tmp_path / "target") is not None
    assert (tmp_path / "target" / "generation_config.json").is_file()
    assert not (tmp_path / "target" / "delta.json").exists()


def test_bf16_resized_and_new_tensors_round_trip_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(64, 32, generator=g).to(torch.bfloat16), "emb": torch.randn(10, 8, generator=g),
            "scale": torch.tensor(3.0), "half": torch.randn(16, generator=g).half()}
    tuned = {"w": (base["w"].float() + 0.01 * torch.randn(64, 32, generator=g)).to(torch.bfloat16),
             "emb": torch.cat([base["emb"] + 1e-3, torch.randn(2, 8, generator=g)]).to(torch.bfloat16),  # dtype+rows
             "scale": torch.tensor(3.5), "half": base["half"] * 1.001, "new": torch.ones(3)}
    _save(tmp_path / "base", base)
    _save(tmp_path / "tuned", tuned)
    diff_weights(tmp_path / "base", tmp_path / "tuned", tmp_path / "delta")
    before = sha256_file(tmp_path / "delta" / "delta.safetensors")
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "target", low_memory=True, shard_size=300)
    assert sha256_file(tmp_path / "delta" / "delta.safetensors") == before  # XOR in place never writes back
    assert (tmp_path / "target" / "model.safetensors.index.json").is_file()  # small shards: an index
    assert verify_same(tmp_path / "tuned", tmp_path / "target") is None
    meta = json.loads((tmp_path / "delta" / "delta.json").read_text())
    assert meta["tensors"]["emb"]["base_shape"] == [10, 8] and meta["tensors"]["new"]["base_sha256"] is None


def test_a_wrong_base_is_refused_naming_the_first_differing_tensor(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    base = {f"layer.{i}.weight": torch.randn(16, 16, generator=g) for i in range(3)}
    _save(tmp_path / "base", base)
    _save(tmp_path / "tuned", {k: v * 1.01 for k, v in base.items()})
    diff_weights(tmp_path / "base", tmp_path / "tuned", tmp_path / "delta")
    other = dict(base, **{"layer.1.weight": base["layer.1.weight"] + 1e-6})
    _save(tmp_path / "other", other)
    assert main(["weights", "apply", str(tmp_path / "other"), str(tmp_path / "delta"), "-o", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the base this delta was made from" in err and "'layer.1.weight'" in err
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.*"))  # nothing half-written
    _save(tmp_path / "shaped", dict(base, **{"layer.2.weight": torch.zeros(8, 16)}))
    with pytest.raises(CamelidError, match=r"'layer.2.weight' is F32\[8, 16\], expected F32\[16, 16\]"):
        apply_delta(tmp_path / "shaped", tmp_path / "delta", tmp_path / "t")


def test_a_damaged_delta_fails_the_target_checksum(tmp_path):
    base = {"a": torch.arange(12, dtype=torch.float32)}
    _save(tmp_path / "base", base)
    _save(tmp_path / "tuned", {"a": base["a"] + 1})
    diff_weights(tmp_path / "base", tmp_path / "tuned", tmp_path / "delta")
    bits = load_file(str(tmp_path / "delta" / "delta.safetensors"))
    bits["a"][3] ^= 1
    save_file(bits, str(tmp_path / "delta" / "delta.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CamelidError, match="does not match the recorded target checksum"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "t")


def test_adapters_and_sizes_are_understood(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(CamelidError, match="PEFT adapter"):
        diff_weights(tmp_path / "adapter", tmp_path / "adapter", tmp_path / "d")
    assert parse_size("1GB") == 10**9 and parse_size("64MiB") == 64 << 20 and parse_size("4096") == 4096


PEAK_SCRIPT = """
import json, sys
import torch, safetensors.torch  # imported before the baseline: only the work itself is measured
from camelid.modelfiles.delta import apply_delta
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
low = sys.argv[4] == "low"
apply_delta(sys.argv[1], sys.argv[2], sys.argv[3], low_memory=low, shard_size="16MiB" if low else None)
print(json.dumps({"peak": status("VmHWM:") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_low_memory_apply_peak_memory_stays_near_one_shard(tmp_path):
    g = torch.Generator().manual_seed(3)
    n, numel = 24, 2 << 20  # 24 tensors of 8 MiB: a 192 MiB model
    base = {f"layer.{i}.weight": torch.randn(numel, generator=g) for i in range(n)}
    _save(tmp_path / "base", base, shard_bytes=16 << 20)
    tuned = {k: v + 1e-3 if i % 2 else v for i, (k, v) in enumerate(base.items())}
    _save(tmp_path / "tuned", tuned, shard_bytes=16 << 20)
    del base, tuned
    diff_weights(tmp_path / "base", tmp_path / "tuned", tmp_path / "delta", low_memory=True, shard_size="16MiB")
    peaks = {}
    for mode in ("low", "default"):
        run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "base"), str(tmp_path / "delta"),
                              str(tmp_path / f"target-{mode}"), mode], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[mode] = json.loads(run.stdout.strip().splitlines()[-1])["peak"] / 2**20
    model_mib = n * numel * 4 / 2**20
    print(f"peak RSS increase: low-memory {peaks['low']:.0f} MiB, default {peaks['default']:.0f} MiB, "
          f"model {model_mib:.0f} MiB, shard 16 MiB")
    assert peaks["low"] < 16 + 4 * 8  # one 16 MiB output shard + a few 8 MiB tensors in flight
    assert peaks["default"] > model_mib * 0.9  # the default writes one 5GB-max shard: the whole model here
    assert len(list((tmp_path / "target-low").glob("model-*.safetensors"))) >= 12
    assert verify_same(tmp_path / "tuned", tmp_path / "target-low") is None


def test_a_delta_never_holds_the_tuned_weights_in_any_format(tmp_path, capsys):
    # issue 16, item 8: a run directory beside its safetensors may hold the same weights as GGUF (camelid export
    # --gguf writes it there), torch .bin/.pt, numpy, or a renamed copy; none of them may reach the delta
    import numpy as np

    from camelid.models.spec import embedded_gguf

    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(32, 16, generator=g), "b": torch.randn(16, generator=g)}
    tuned = {k: v + 0.01 for k, v in base.items()}
    _save(tmp_path / "base", base)
    t = _save(tmp_path / "tuned", tuned)
    (t / "tokenizer_config.json").write_text("{}")
    (t / "README.md").write_text("a fine-tune\n")
    (t / "model.gguf").symlink_to(embedded_gguf())  # the real GGUF, as export --gguf leaves it in a run
    (t / "model-Q8_0.gguf.part").write_bytes(b"GGUF" + b"\0" * 64)
    torch.save(tuned, t / "pytorch_model.bin")
    torch.save(tuned, t / "weights.pt")
    torch.save(tuned, t / "tuned.weights")  # a renamed torch file: found by content
    np.save(t / "w.npy", tuned["w"].numpy())
    save_file(tuned, str(t / "copy.data"))  # a renamed safetensors file: found by content
    weight_files = [p for p in t.iterdir() if p.name not in ("config.json", "tokenizer_config.json", "README.md")]
    assert main(["weights", "diff", f"hf:{tmp_path / 'base'}", f"hf:{t}", "-o", str(tmp_path / "delta")]) == 0
    err = capsys.readouterr().err
    delta = tmp_path / "delta"
    names = sorted(p.name for p in delta.iterdir())
    assert names == ["README.md", "config.json", "delta.json", "delta.safetensors", "tokenizer_config.json"]
    tuned_hashes = {sha256_file(p) for p in weight_files}
    assert not tuned_hashes & {sha256_file(p) for p in delta.iterdir()}
    stored = load_file(str(delta / "delta.safetensors"))
    assert all(not torch.equal(stored[k].view(torch.float32), v) for k, v in tuned.items())
    left = json.loads((delta / "delta.json").read_text())["left_out"]
    assert sorted(x.split(" ")[0] for x in left) == sorted(p.name for p in weight_files if p.name != "model.safetensors")
    assert all(p.name in err for p in weight_files if p.name != "model.safetensors")
    assert main(["weights", "apply", f"hf:{tmp_path / 'base'}", str(delta), "-o", str(tmp_path / "target")]) == 0
    assert verify_same(t, tmp_path / "target") is None
