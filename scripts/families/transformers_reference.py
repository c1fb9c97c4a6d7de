#!/usr/bin/env python3
"""Reference log-probabilities from Hugging Face `transformers` (PyTorch, CPU, float32) for the
family check's tiny random models in HF layout, written in f32 and in bf16 safetensors. Run
once and committed as `transformers_reference.json`: the family check (compare.py) scores the
same token sequences with this engine's HF loading and compares, so the HF path is held to the
library that defines HF's formats (config keys, norms stored as offsets, rotary layouts), not
only to llama.cpp on our own conversion of them.

Re-run after changing the models (compare.py's `random_model`, `CASES`) or the sequences; the
family check refuses a reference whose weights' hash no longer matches. It needs PyTorch and
transformers, which the worker's tests do not:

    python3 -m venv /tmp/reference && /tmp/reference/bin/pip install torch transformers gguf numpy
    /tmp/reference/bin/python scripts/families/transformers_reference.py
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CASES, CONTINUATION, PROMPT, REFERENCE, REFERENCE_TOP, VOCAB, random_model, reference_sequence, weights_hash, write_hf  # noqa: E402

SEED = 7


def logprobs(directory, sequence):
    """transformers' log-probabilities at every position of `sequence` from the prompt's last."""
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)[PROMPT - 1:].numpy()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    entries = []
    with tempfile.TemporaryDirectory() as work:
        for name, (arch, weight_type, rope) in CASES.items():
            if weight_type != "F32":
                continue
            tensors, config = random_model(arch, rope, SEED)
            sequence = reference_sequence(SEED)
            for dtype in ("F32", "BF16"):
                directory = os.path.join(work, f"{name}-{dtype}")
                write_hf(directory, tensors, config, dtype)
                scores = logprobs(directory, sequence)
                assert scores.shape == (PROMPT + CONTINUATION - (PROMPT - 1), VOCAB), scores.shape
                top = np.argsort(-scores, axis=1)[:, :REFERENCE_TOP]
                entries.append({
                    "case": name,
                    "dtype": dtype,
                    "weights_sha256": weights_hash(tensors),
                    "sequence": sequence,
                    "top_ids": top.tolist(),
                    "top_logprobs": np.round(np.take_along_axis(scores, top, axis=1), 6).tolist(),
                })
                print(f"{name} {dtype}: done", file=sys.stderr)
    with open(REFERENCE, "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED,
                   "cases": entries}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {REFERENCE}: {len(entries)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
