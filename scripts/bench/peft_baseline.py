#!/usr/bin/env python3
"""HF transformers + PEFT on the workload `bench_gpu --prepare-only` writes: the same model files,
the same adapters and the same prompt token ids. Measures aggregate greedy decode tokens/s with
every request on its own adapter (PEFT's mixed-adapter batches, `adapter_names`) and with all on
one adapter, the way bench_gpu does: decode steps only (a generate of n + 1 new tokens minus one
of 1, the prefill), median of the workload's runs. Also keeps each request's first greedy tokens
on its own adapter, so bench_gpu can show that both compute the same thing. Prints one JSON object
for `bench_gpu --baseline`.

    python3 scripts/bench/peft_baseline.py WORKLOAD.json [--device cuda] [--dtype float32]
"""
import argparse
import json
import statistics
import sys
import time

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM

# Greedy tokens per request compared with bench_gpu's (the prefill's pick and the decode steps').
CHECKED_TOKENS = 8


def check_tokens(model, prompts, mask, names, count):
    """Each request's greedy tokens, up to and including its first end of sequence: a forced
    length (min_new_tokens) would mask that token's logit, which the worker's argmax does not."""
    with torch.inference_mode():
        out = model.generate(input_ids=prompts, attention_mask=mask, adapter_names=names, max_new_tokens=count,
                             do_sample=False, pad_token_id=0)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tokens = []
    for row in out[:, prompts.shape[1]:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        tokens.append(row[:end])
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", help="float32 (as the worker computes) or bfloat16")
    parser.add_argument("--runs", type=int, help="timed runs per mode (default: the workload's); PEFT's mixed-adapter "
                        "steps are slow and steady, so one saves minutes of a GPU session")
    args = parser.parse_args()
    with open(args.workload) as f:
        work = json.load(f)
    device, dirs = args.device, work["adapter_dirs"]

    started = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(work["model_dir"], dtype=getattr(torch, args.dtype))
    base.to(device).eval()
    model = PeftModel.from_pretrained(base, dirs[0], adapter_name="a0")
    for i, path in enumerate(dirs[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
        print(f"\radapters loaded: {i + 1}/{len(dirs)}", end="", file=sys.stderr)
    model.eval()
    print(f"\nmodel and adapters loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    prompts = torch.tensor(work["prompts"], device=device)  # equal lengths: no padding
    mask = torch.ones_like(prompts)
    new_tokens = work["new_tokens"]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def generate(names, count):
        with torch.inference_mode():
            out = model.generate(input_ids=prompts, attention_mask=mask, adapter_names=names, max_new_tokens=count,
                                 min_new_tokens=count, do_sample=False, pad_token_id=0)
        assert out.shape[1] == prompts.shape[1] + count, "generate stopped early"
        return out[:, prompts.shape[1]:]

    def timed_generate(names, count):
        sync()
        t = time.perf_counter()
        generate(names, count)
        sync()
        return time.perf_counter() - t

    def decode_rate(names):
        timed_generate(names, 2)  # warm-up
        rates = []
        for _ in range(args.runs or work["runs"]):
            prefill = timed_generate(names, 1)
            total = timed_generate(names, new_tokens + 1)
            rates.append(len(names) * new_tokens / (total - prefill))
        print(f"  {len(set(names))} adapter(s): {statistics.median(rates):.0f} tok/s (runs {[round(r) for r in rates]})",
              file=sys.stderr)
        return statistics.median(rates)

    distinct_names = [f"a{i}" for i in range(len(dirs))]
    distinct = decode_rate(distinct_names)
    one = decode_rate(["a0"] * len(dirs))
    first_tokens = check_tokens(model, prompts, mask, distinct_names, min(CHECKED_TOKENS, new_tokens + 1))
    print(json.dumps({
        "name": f"transformers {transformers.__version__} + peft {peft.__version__} ({args.dtype}, {device}, "
                f"median of {args.runs or work['runs']})",
        "distinct_tokens_per_s": distinct,
        "one_adapter_tokens_per_s": one,
        "distinct_first_tokens": first_tokens,
    }))


if __name__ == "__main__":
    main()
