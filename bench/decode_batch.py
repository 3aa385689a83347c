"""What batching can give on this machine: llama.cpp's own low-level batch API, one `llama_decode` carrying one token
for each of N sequences (after a 64-token prompt each), against one sequence. The ceiling for any batcher built on
llama.cpp here; bench/serve_batch.py and bench/answer.py measure camelid's batchers.

    python bench/decode_batch.py [--threads 2] [--steps 32] [--no-unified-kv] [--flash-attn auto|on|off]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama_cpp loads (see models/llamacpp.py)

import llama_cpp  # noqa: E402
from llama_cpp._internals import LlamaContext, LlamaModel  # noqa: E402

from camelid.models.spec import embedded_gguf  # noqa: E402

PROMPT = 64  # prompt tokens per sequence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per sequence count")
    ap.add_argument("--no-unified-kv", action="store_true", help="one KV stream per sequence")
    ap.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp's default is auto; llama-cpp-python's Llama() turns it off")
    args = ap.parse_args()

    llama_cpp.llama_backend_init()
    model = LlamaModel(path_model=str(embedded_gguf()), params=llama_cpp.llama_model_default_params(), verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.n_batch = 16 * 512, 16, 512
    cp.n_threads = cp.n_threads_batch = args.threads
    cp.kv_unified = not args.no_unified_kv
    cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[args.flash_attn]
    ctx = LlamaContext(model=model, params=cp, verbose=False)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq

    def decode(n: int) -> None:
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx.ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")

    base = None
    for n in (1, 2, 4, 8, 16):
        llama_cpp.llama_memory_clear(ctx.memory, True)
        k = 0
        for s in range(n):  # the prompts, in batches of up to 512 tokens
            for p in range(PROMPT):
                put(k, 100 + p, p, s, p == PROMPT - 1)
                k += 1
                if k == 512:
                    decode(k)
                    k = 0
        if k:
            decode(k)
        t = time.perf_counter()
        for step in range(args.steps):
            for s in range(n):
                put(s, 200 + step, PROMPT + step, s, True)
            decode(n)
        dt = time.perf_counter() - t
        rate = n * args.steps / dt
        base = base or rate
        print(f"threads {args.threads} unified_kv {cp.kv_unified} flash_attn {args.flash_attn} sequences {n:2d}: {dt / args.steps * 1000:7.1f} "
              f"ms/step {rate:7.1f} tok/s ({rate / base:.2f}x one sequence) | load {os.getloadavg()[0]:.1f}",
              flush=True)
    llama_cpp.llama_batch_free(batch)


if __name__ == "__main__":
    main()
