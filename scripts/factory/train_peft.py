#!/usr/bin/env python3
"""The peer for `scripts/bench-train.sh`: LoRA training of the same base model with Hugging Face
PEFT + transformers on torch's CPU backend, timed the same way as `adapter train`.

    train_peft.py --gguf FILE --docs DIR --steps N --seq-len L --rank R --alpha A --threads T

Loads the GGUF file through transformers (dequantized to f32), adds LoRA on all seven
projections, packs the documents' tokens (each followed by EOS) into sequences of L tokens and
runs N AdamW updates of one sequence each. Prints one JSON line: tokens/s over the updates
after the first (and over all, as `adapter train` reports), and the peak resident memory.
"""
import argparse
import json
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--docs", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    directory, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, torch_dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=targets,
                                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    model.train()
    ids = []
    for doc in sorted(os.listdir(a.docs)):
        with open(os.path.join(a.docs, doc)) as f:
            ids += tok(f.read(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    while len(ids) < a.seq_len * a.steps:
        ids += ids
    seqs = [ids[i * a.seq_len:(i + 1) * a.seq_len] for i in range(a.steps)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    started = time.perf_counter()
    after_first = None
    losses = []
    for step, seq in enumerate(seqs):
        x = torch.tensor([seq])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step == 0:
            after_first = time.perf_counter()
    ended = time.perf_counter()
    rest = a.seq_len * (a.steps - 1) / (ended - after_first) if a.steps > 1 else float("nan")
    print(json.dumps({
        "tokens_per_second": a.seq_len * a.steps / (ended - started),
        "tokens_per_second_after_first": rest,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_first": losses[0], "loss_last": losses[-1],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
