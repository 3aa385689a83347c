"""What batching can give on this machine: llama.cpp's own low-level batch API, one `llama_decode` carrying one token
for each of N sequences (after a 64-token prompt each), against one sequence. The ceiling for any batcher built on
llama.cpp here; bench/serve_batch.py (branch issue-23a) measures a batcher against it.

    python bench/decode_batch.py [THREADS] [UNIFIED_KV: 1|0]
"""
import os, sys, time, ctypes
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import llama_cpp
from llama_cpp._internals import LlamaModel, LlamaContext
from camelid.models.spec import embedded_gguf

th = int(sys.argv[1]) if len(sys.argv) > 1 else 2
unified = (sys.argv[2] == "1") if len(sys.argv) > 2 else True
llama_cpp.llama_backend_init()
mp = llama_cpp.llama_model_default_params()
model = LlamaModel(path_model=str(embedded_gguf()), params=mp, verbose=False)
cp = llama_cpp.llama_context_default_params()
cp.n_ctx = 16 * 512; cp.n_seq_max = 16; cp.n_threads = th; cp.n_threads_batch = th; cp.n_batch = 512
cp.kv_unified = unified
ctx = LlamaContext(model=model, params=cp, verbose=False)
batch = llama_cpp.llama_batch_init(512, 0, 1)
def put(i, tok, pos, seq, logits):
    batch.token[i] = tok; batch.pos[i] = pos; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = seq; batch.logits[i] = logits
PROMPT = 64
for n in (1, 2, 4, 8, 16):
    llama_cpp.llama_memory_clear(ctx.memory, True)
    # prompts: 64 tokens each
    k = 0
    for s in range(n):
        for p in range(PROMPT):
            put(k, 100 + p, p, s, p == PROMPT - 1); k += 1
            if k == 512:
                batch.n_tokens = k; assert llama_cpp.llama_decode(ctx.ctx, batch) == 0; k = 0
    if k:
        batch.n_tokens = k; assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
    steps = 32
    t = time.perf_counter()
    for st in range(steps):
        for s in range(n):
            put(s, 200 + st, PROMPT + st, s, True)
        batch.n_tokens = n
        assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
    dt = time.perf_counter() - t
    print(f"threads {th} unified {unified} seqs {n:2d}: {dt/steps*1000:7.1f} ms/step  {n*steps/dt:7.1f} tok/s", flush=True)
