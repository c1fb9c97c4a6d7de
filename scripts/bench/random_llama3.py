#!/usr/bin/env python3
"""A random-weight Llama 3 of about a billion parameters in Q4_K_M, for the speed benchmarks
(speed does not need real weights): Llama 3.2 1B's shapes (hidden 2048, 16 layers, 32 query
heads over 8 key/value heads, MLP 8192, rope base 500 000 with Llama 3's frequency factors, tied
embeddings) over a 49,152-token byte-level vocabulary. The weights are written in f16 with the
`gguf` package, then quantized by llama.cpp's own quantizer (`llama_model_quantize`, as
llama-quantize does) to Q4_K_M: Q4_K and Q6_K blocks, as the files people download.

    random_llama3.py OUT.gguf [--seed N]
"""
import argparse
import os
import pathlib
import sys
import tempfile

import gguf
import llama_cpp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "families"))
from compare import add_byte_level_vocabulary, interleave_rope_rows, llama3_factors  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 16, 32, 8, 8192, 49152
HEAD_DIM = HIDDEN // HEADS
THETA, CONTEXT = 500000.0, 8192
# A plain turn format, so chat prompts render; its markers are ordinary text.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_f16(path, seed):
    rng = np.random.default_rng(seed)
    matrix = lambda rows, cols: (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)  # noqa: E731
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("random-llama3-1b")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_byte_level_vocabulary(w, VOCAB)
    w.add_bos_token_id(VOCAB - 2)
    w.add_eos_token_id(VOCAB - 3)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    w.add_tensor("token_embd.weight", matrix(VOCAB, HIDDEN))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    w.add_tensor("rope_freqs.weight", llama3_factors(HEAD_DIM, THETA, 32.0, 1.0, 4.0, 8192))
    for i in range(LAYERS):
        g = f"blk.{i}"
        w.add_tensor(f"{g}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"{g}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"{g}.attn_q.weight", interleave_rope_rows(matrix(HIDDEN, HIDDEN), HEADS))
        w.add_tensor(f"{g}.attn_k.weight", interleave_rope_rows(matrix(KV_HEADS * HEAD_DIM, HIDDEN), KV_HEADS))
        w.add_tensor(f"{g}.attn_v.weight", matrix(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"{g}.attn_output.weight", matrix(HIDDEN, HIDDEN))
        w.add_tensor(f"{g}.ffn_gate.weight", matrix(FFN, HIDDEN))
        w.add_tensor(f"{g}.ffn_up.weight", matrix(FFN, HIDDEN))
        w.add_tensor(f"{g}.ffn_down.weight", matrix(HIDDEN, FFN))
        print(f"  layer {i + 1}/{LAYERS} generated", flush=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out.parent) as work:
        f16 = os.path.join(work, "f16.gguf")
        write_f16(f16, args.seed)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.nthread = os.cpu_count() or 1
        print("quantizing to Q4_K_M with llama.cpp's quantizer", flush=True)
        tmp_out = os.path.join(work, "q4_k_m.gguf")
        if llama_cpp.llama_model_quantize(f16.encode(), tmp_out.encode(), params) != 0:
            sys.exit("error: llama_model_quantize failed")
        os.replace(tmp_out, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
