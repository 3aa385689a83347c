"""Tools that read and write model files on disk (never the training loop): `camelid export` (merge.py: fold an
adapter into its base; gguf.py: a GGUF file for llama.cpp plus an Ollama Modelfile), `camelid weights diff|apply`
(delta.py: bit-exact XOR delta weights) and `camelid model check` (check.py: do tokenizer, generation config and
chat template agree on where a reply ends?). Where a spec's files are is models/checkpoint.py's job."""
