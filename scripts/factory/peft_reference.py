#!/usr/bin/env python3
"""Reference logits from Hugging Face PEFT + transformers (PyTorch, CPU, float32) for an adapter
written by `adapter train`'s writer over a tiny random Llama: the fixture
(`openledger_factory::testing`, written by the `peft_fixture` example, the same bytes on every
machine) loaded with `PeftModel.from_pretrained`, its logits at every position of the fixture's
tokens. Run once and committed as worker/factory/tests/data/peft_reference.json; the factory's
test refuses a reference whose files' hashes no longer match. Needs torch, transformers and peft
(scripts/bench-train.sh installs them into its venv):

    /var/tmp/openledger-train-venv/bin/python scripts/factory/peft_reference.py
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from peft import PeftModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = [5, 17, 42, 99, 3, 250, 7, 61, 88, 140, 201, 33]  # FIXTURE_TOKENS


def blake2(path):
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=32).hexdigest()


def main():
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["cargo", "run", "-q", "--release", "-p", "openledger-factory", "--example", "peft_fixture", "--", work],
                       cwd=ROOT, check=True)
        base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(work, "base"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, os.path.join(work, "adapter"))
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([TOKENS])).logits[0]
        reference = {
            "tokens": TOKENS,
            "base_weights_blake2": blake2(os.path.join(work, "base", "model.safetensors")),
            "adapter_weights_blake2": blake2(os.path.join(work, "adapter", "adapter_model.safetensors")),
            "adapter_config": json.load(open(os.path.join(work, "adapter", "adapter_config.json"))),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": __import__("peft").__version__},
            "logits": [[round(float(v), 6) for v in row] for row in logits],
        }
    out = os.path.join(ROOT, "worker", "factory", "tests", "data", "peft_reference.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(reference, f)
        f.write("\n")
    print(f"wrote {out}: {len(TOKENS)} positions x {len(reference['logits'][0])} logits", file=sys.stderr)


if __name__ == "__main__":
    main()
