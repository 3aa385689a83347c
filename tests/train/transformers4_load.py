"""Run by a transformers 4.x interpreter (tests/train/test_transformers4.py): load a checkpoint as 4.x does and
print what it read (rope_theta, tokenizer class, token ids, chat prompt, logits) as JSON. Imports only
transformers and torch, so it runs in a bare venv."""

import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

directory, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
ids = tok(text, add_special_tokens=False).input_ids
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
chat = [{"role": "user", "content": "Name a color."}]
print(json.dumps({"version": transformers.__version__, "rope_theta": getattr(model.config, "rope_theta", None),
                  "tokenizer_class": type(tok).__name__, "ids": ids, "eos": tok.eos_token, "pad": tok.pad_token,
                  "prompt": tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                  "logits": logits.tolist()}))
