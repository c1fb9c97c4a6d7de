#!/usr/bin/env python3
"""Writes a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) as a GGUF LoRA
adapter for llama.cpp's `--lora`, with the same weights, for the serving benchmark
(scripts/bench-serving.sh): llama-server and the worker then serve the same adapters.

Tensor names follow llama.cpp's converter (`blk.N.attn_q.weight.lora_a` / `.lora_b`, A as
[rank, in], B as [out, rank]); for the `llama` architecture the rows of q's and k's B are
permuted as the converter permutes the base's q and k weights (its rope pairs (2i, 2i + 1)).
PEFT's scale alpha / rank is llama.cpp's; an rsLoRA adapter's alpha is rescaled to match.

    peft_to_gguf_lora.py --base model.gguf ADAPTER_DIR OUT.gguf
"""
import argparse
import json
import math
import pathlib
import re
import struct
import sys

import gguf
import numpy as np

PROJECTIONS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NAME = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.weight$")


def read_safetensors(path):
    """Every tensor of a safetensors file as f32 numpy arrays (F32, F16 and BF16)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        dtype = info["dtype"]
        if dtype == "F32":
            array = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            array = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"error: {name} is {dtype}; only F32, F16 and BF16 adapters are converted")
        tensors[name] = array.reshape(info["shape"])
    return tensors


def permute_rows(b, heads):
    """B's output rows in the order llama.cpp's converter gives the `llama` base's q and k rows."""
    out, rank = b.shape
    return b.reshape(heads, 2, out // heads // 2, rank).swapaxes(1, 2).reshape(out, rank)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the GGUF base model the adapter is for")
    ap.add_argument("adapter", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.base)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    arch = field("general.architecture")
    heads = int(field(f"{arch}.attention.head_count"))
    kv_heads = int(field(f"{arch}.attention.head_count_kv")) if f"{arch}.attention.head_count_kv" in reader.fields else heads

    config = json.loads((args.adapter / "adapter_config.json").read_text())
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # alpha / sqrt(r) == (alpha·sqrt(r)) / r
    tensors = read_safetensors(args.adapter / "adapter_model.safetensors")

    writer = gguf.GGUFWriter(str(args.out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    written = 0
    for name, array in sorted(tensors.items()):
        match = NAME.match(name)
        if not match:
            sys.exit(f"error: unexpected tensor {name} in {args.adapter}")
        layer, module, which = match.groups()
        target = f"blk.{layer}.{PROJECTIONS[module]}.weight"
        if which == "B" and arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            array = permute_rows(array, heads if module == "self_attn.q_proj" else kv_heads)
        writer.add_tensor(f"{target}.lora_{which.lower()}", np.ascontiguousarray(array, dtype=np.float32))
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{args.out}: {written} tensors, rank {rank}, alpha {alpha:g}, {arch}")


if __name__ == "__main__":
    main()
