"""This engine against llama.cpp on tiny random-weight models of every family it runs.

For each case (a family, a weight type, a rope variant) it writes a small GGUF file with the
`gguf` package (random weights from a fixed seed), has llama.cpp (llama-cpp-python) continue a
random prompt greedily, and scores the whole sequence with both engines: llama.cpp in one batch,
this engine's `logits` example with the prompt as one chunk and the continuation one decode step
at a time, on the GGUF file and, for float weights, on the same weights written in HF layout
(config.json and safetensors). It then checks, at every position from the prompt's last:

  * log-probabilities: the largest difference over the vocabulary is within the case's
    tolerance (the engines quantize activations and sum in different orders);
  * the next token: ours is llama.cpp's, except where llama.cpp's two best are within MARGIN of
    each other, where ours must be one of the two.

Then the float cases' HF files, in f32 and in bf16, against Hugging Face transformers: its
log-probabilities of a fixed random sequence (its best 8 tokens at each position), computed
once by transformers_reference.py and committed, within the float tolerance, and the same
next tokens (but near ties). So the HF path is also held to the library that defines HF's
formats, not only to llama.cpp on our own conversion of them.

Prints a table and exits non-zero if any case fails.

Then the same for tokenizers read from GGUF metadata alone: SentencePiece vocabularies (with and
without the space before the text), each text's tokens and their decoding against llama.cpp's.

    python compare.py --logits PATH/TO/examples/logits --tokenize PATH/TO/examples/tokenize
                      [--work DIR] [--case NAME ...]
"""

import argparse
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import gguf
import numpy as np

# Where llama.cpp's top two log-probabilities are closer than this, either is a right answer.
FLOAT_MARGIN = 0.05
# Float weights: the engines differ only in summation order and the exponentials.
FLOAT_TOLERANCE = 0.005
# Quantized weights: each engine quantizes activations its own way, so each is judged by its
# distance from the same weights run in float; ours must be no farther than this times
# llama.cpp's. Near ties are wider for the same reason.
QUANT_ERROR_RATIO = 1.25
QUANT_MARGIN = 0.3
VOCAB = 512
PROMPT = 24
CONTINUATION = 40
# Shapes: two layers, grouped-query attention (4 heads over 2), widths that are multiples of 256.
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 2, 4, 2, 64
CONTEXT = 256


def byte_tokens():
    """GPT-2's printable stand-ins for the 256 bytes, so llama.cpp's byte-level BPE loads."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def add_byte_level_vocabulary(w, vocab):
    """A `gpt2` vocabulary of `vocab` tokens: the 256 bytes, placeholders, and "ab" from the one
    merge, so both engines load a byte-level BPE without a real model's tokenizer."""
    tokens = byte_tokens() + [f"<t{i}>" for i in range(vocab - 256 - 1)] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_token_merges(["a b"])


def llama3_factors(head_dim, theta, factor, low, high, original):
    """Llama 3.1's rope frequency factors, as transformers and llama.cpp's converter compute them."""
    out = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# name: (architecture, weight type, rope variant)
CASES = {
    "llama-f32": ("llama", "F32", None),
    "llama-q8_0": ("llama", "Q8_0", None),
    "llama-q4_1": ("llama", "Q4_1", None),
    "llama3-rope-f32": ("llama", "F32", "llama3"),
    "llama-linear-rope-f32": ("llama", "F32", "linear"),
    "qwen2-f32": ("qwen2", "F32", None),
    "qwen2-q8_0": ("qwen2", "Q8_0", None),
    "qwen3-f32": ("qwen3", "F32", None),
    "qwen3-q8_0": ("qwen3", "Q8_0", None),
    "gemma3-f32": ("gemma3", "F32", None),
    "gemma3-q8_0": ("gemma3", "Q8_0", None),
}
# transformers' log-probabilities for the float cases in HF layout (f32 and bf16), written once
# by transformers_reference.py: the best REFERENCE_TOP tokens' at each position.
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transformers_reference.json")
REFERENCE_TOP = 8
# Gemma 3's sliding window, small enough to matter within the 64 tokens: its first layer
# attends to the last 8 positions (rope base 10 000), its second to all (rope base 1 000 000).
GEMMA_WINDOW = 8


def random_model(arch, rope, seed):
    """Random weights under their HF names, and the HF config that goes with them."""
    rng = np.random.default_rng(seed)

    def matrix(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale / math.sqrt(cols)).astype(np.float32)

    def vector(size, mean, spread):
        return (mean + spread * rng.standard_normal(size)).astype(np.float32)

    q_width, kv_width = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    # Gemma's norms are stored as offsets from 1 (its RMS norm multiplies by 1 + w).
    one = 0.0 if arch == "gemma3" else 1.0
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
         "model.norm.weight": vector(HIDDEN, one, 0.1)}
    # Qwen 3's and Gemma 3's small models tie the output to the embeddings: no output tensor.
    if arch not in ("qwen3", "gemma3"):
        t["lm_head.weight"] = matrix(VOCAB, HIDDEN, 3.0)
    for i in range(LAYERS):
        b = f"model.layers.{i}"
        t[f"{b}.input_layernorm.weight"] = vector(HIDDEN, one, 0.1)
        t[f"{b}.post_attention_layernorm.weight"] = vector(HIDDEN, one, 0.1)
        if arch == "gemma3":
            t[f"{b}.pre_feedforward_layernorm.weight"] = vector(HIDDEN, one, 0.1)
            t[f"{b}.post_feedforward_layernorm.weight"] = vector(HIDDEN, one, 0.1)
        # Sharpish attention (q·k larger than the weights' usual scale gives), so the rotary
        # embedding decides what is attended to.
        t[f"{b}.self_attn.q_proj.weight"] = matrix(q_width, HIDDEN, 1.5)
        t[f"{b}.self_attn.k_proj.weight"] = matrix(kv_width, HIDDEN, 1.5)
        t[f"{b}.self_attn.v_proj.weight"] = matrix(kv_width, HIDDEN, 1.0)
        t[f"{b}.self_attn.o_proj.weight"] = matrix(HIDDEN, q_width, 1.0)
        t[f"{b}.mlp.gate_proj.weight"] = matrix(FFN, HIDDEN, 1.0)
        t[f"{b}.mlp.up_proj.weight"] = matrix(FFN, HIDDEN, 1.0)
        t[f"{b}.mlp.down_proj.weight"] = matrix(HIDDEN, FFN, 1.0)
        if arch == "qwen2":
            for p, width in (("q", q_width), ("k", kv_width), ("v", kv_width)):
                t[f"{b}.self_attn.{p}_proj.bias"] = vector(width, 0.0, 0.5)
        if arch in ("qwen3", "gemma3"):
            t[f"{b}.self_attn.q_norm.weight"] = vector(HEAD_DIM, one, 0.2)
            t[f"{b}.self_attn.k_norm.weight"] = vector(HEAD_DIM, one, 0.2)
    scaling = None
    if rope == "llama3":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}
    elif rope == "linear":
        scaling = {"rope_type": "linear", "factor": 4.0}
    config = {"model_type": arch, "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
              "head_dim": HEAD_DIM, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
              "max_position_embeddings": CONTEXT, "rope_scaling": scaling,
              "tie_word_embeddings": arch in ("qwen3", "gemma3")}
    if arch == "gemma3":
        config.update({"model_type": "gemma3_text", "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                       "sliding_window": GEMMA_WINDOW, "layer_types": ["sliding_attention", "full_attention"],
                       "query_pre_attn_scalar": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh"})
    return t, config


def reference_sequence(seed):
    """The tokens transformers and ours score in the HF comparison: random, so it needs no engine
    to continue a prompt."""
    return [int(t) for t in np.random.default_rng(seed + 2).integers(2, VOCAB, PROMPT + CONTINUATION)]


def weights_hash(tensors):
    """SHA-256 of a model's weights, names and shapes: what tells a stale reference."""
    h = hashlib.sha256()
    for name, array in tensors.items():
        h.update(f"{name}{array.shape}".encode())
        h.update(array.astype("<f4").tobytes())
    return h.hexdigest()


def bf16_bits(array):
    """The bfloat16 nearest each f32 (ties to even), as its 16 bits."""
    bits = array.astype("<f4").view("<u4").astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def write_hf(directory, tensors, config, dtype="F32"):
    """`config.json` and `model.safetensors` in `dtype` (F32 or BF16; the format written by
    hand: a JSON header, then the raw little-endian data)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    data = {name: (array.astype("<f4") if dtype == "F32" else bf16_bits(array)).tobytes() for name, array in tensors.items()}
    header, offset = {}, 0
    for name, array in tensors.items():
        size = len(data[name])
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for chunk in data.values():
            f.write(chunk)


def interleave_rope_rows(w, heads):
    """llama.cpp's converter's permutation of Llama's q and k rows: each head's half-split pairs
    (i, i + d/2) become adjacent rows (2i, 2i + 1), for its interleaved rotary embedding."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch, weight_type, rope, tensors, config):
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    if arch == "gemma3":
        w.add_sliding_window(GEMMA_WINDOW)
        w.add_uint32("gemma3.attention.sliding_window_pattern", 2)
    if rope == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(config["rope_scaling"]["factor"])
    add_byte_level_vocabulary(w, VOCAB)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)

    def matrix(name, data):
        if weight_type == "F32":
            w.add_tensor(name, data)
        else:
            qtype = gguf.GGMLQuantizationType[weight_type]
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    t = tensors
    # llama.cpp's converter adds Gemma's 1 to its norm weights.
    one = 1.0 if arch == "gemma3" else 0.0
    norm = lambda name: (t[name] + one).astype(np.float32)
    # The embeddings stay f32: both engines dequantize them to look rows up.
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", norm("model.norm.weight"))
    if "lm_head.weight" in t:
        matrix("output.weight", t["lm_head.weight"])
    if rope == "llama3":
        s = config["rope_scaling"]
        factors = llama3_factors(HEAD_DIM, config["rope_theta"], s["factor"], s["low_freq_factor"],
                                 s["high_freq_factor"], s["original_max_position_embeddings"])
        assert factors.min() == 1.0 and factors.max() == 8.0, "the bands must all occur"
        w.add_tensor("rope_freqs.weight", factors)
    for i in range(LAYERS):
        b, g = f"model.layers.{i}", f"blk.{i}"
        q, k = t[f"{b}.self_attn.q_proj.weight"], t[f"{b}.self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = interleave_rope_rows(q, HEADS), interleave_rope_rows(k, KV_HEADS)
        w.add_tensor(f"{g}.attn_norm.weight", norm(f"{b}.input_layernorm.weight"))
        if arch == "gemma3":
            w.add_tensor(f"{g}.post_attention_norm.weight", norm(f"{b}.post_attention_layernorm.weight"))
            w.add_tensor(f"{g}.ffn_norm.weight", norm(f"{b}.pre_feedforward_layernorm.weight"))
            w.add_tensor(f"{g}.post_ffw_norm.weight", norm(f"{b}.post_feedforward_layernorm.weight"))
        else:
            w.add_tensor(f"{g}.ffn_norm.weight", t[f"{b}.post_attention_layernorm.weight"])
        matrix(f"{g}.attn_q.weight", q)
        matrix(f"{g}.attn_k.weight", k)
        matrix(f"{g}.attn_v.weight", t[f"{b}.self_attn.v_proj.weight"])
        matrix(f"{g}.attn_output.weight", t[f"{b}.self_attn.o_proj.weight"])
        matrix(f"{g}.ffn_gate.weight", t[f"{b}.mlp.gate_proj.weight"])
        matrix(f"{g}.ffn_up.weight", t[f"{b}.mlp.up_proj.weight"])
        matrix(f"{g}.ffn_down.weight", t[f"{b}.mlp.down_proj.weight"])
        if arch == "qwen2":
            for p in "qkv":
                w.add_tensor(f"{g}.attn_{p}.bias", t[f"{b}.self_attn.{p}_proj.bias"])
        if arch in ("qwen3", "gemma3"):
            w.add_tensor(f"{g}.attn_q_norm.weight", norm(f"{b}.self_attn.q_norm.weight"))
            w.add_tensor(f"{g}.attn_k_norm.weight", norm(f"{b}.self_attn.k_norm.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp(path, context=CONTEXT):
    from llama_cpp import Llama  # here, so the transformers reference script needs no llama.cpp
    # f32 keys and values, as ours: llama.cpp's default f16 cache would be a difference of its own.
    return Llama(model_path=path, n_ctx=context, n_batch=context, n_threads=2, logits_all=True,
                 type_k=gguf.GGMLQuantizationType.F32, type_v=gguf.GGMLQuantizationType.F32, verbose=False)


def log_softmax(logits):
    logits = np.array(logits, dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def llama_cpp_continuation(llm, prompt, count):
    """`prompt` and llama.cpp's greedy continuation of it by `count` tokens, from an empty cache."""
    llm.reset()
    llm.eval(prompt)
    sequence = list(prompt)
    for _ in range(count):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        sequence.append(nxt)
        llm.eval([nxt])
    return sequence


def llama_cpp_logprobs(path, sequence):
    """llama.cpp's log-probabilities at every position of `sequence` from the prompt's last, in one batch."""
    llm = llama_cpp(path)
    llm.eval(sequence)
    return log_softmax(llm.scores[: len(sequence)])[PROMPT - 1 :]


def our_logprobs(binary, path, sequence, work):
    """Ours at the same positions: the prompt as one chunk, then one decode step per token."""
    out = os.path.join(work, "ours.f32")
    ids = ",".join(map(str, sequence))
    subprocess.run([binary, path, out, ids, str(PROMPT)], check=True)
    ours = np.fromfile(out, dtype="<f4").astype(np.float64)
    return ours.reshape(-1, VOCAB)


def tokens_agree(ours, theirs, margin):
    """(near ties, first position where the argmaxes part, positions where ours is wrong): ours
    must be llama.cpp's best token, or its second where the two are within `margin`."""
    near_ties = wrong = 0
    first_part = None
    for pos in range(len(theirs)):
        top2 = np.argsort(theirs[pos])[::-1][:2]
        mine = int(np.argmax(ours[pos]))
        tie = theirs[pos][top2[0]] - theirs[pos][top2[1]] < margin
        near_ties += tie
        if mine != top2[0]:
            first_part = pos if first_part is None else first_part
            if not (tie and mine == top2[1]):
                wrong += 1
    return near_ties, first_part, wrong


def run_case(name, binary, work, seed):
    """llama.cpp on the case's GGUF file against ours on the same file and, for float weights,
    on the same weights in HF layout (config.json and safetensors, q and k rows not permuted).
    Quantized weights are also judged against the same weights dequantized and run in float by
    llama.cpp: both engines quantize activations, so neither is the truth."""
    arch, weight_type, rope = CASES[name]
    tensors, config = random_model(arch, rope, seed)
    path = os.path.join(work, f"{name}.gguf")
    write_gguf(path, arch, weight_type, rope, tensors, config)
    rng = np.random.default_rng(seed + 1)
    prompt = [int(t) for t in rng.integers(2, VOCAB, PROMPT)]
    sequence = llama_cpp_continuation(llama_cpp(path), prompt, CONTINUATION)
    theirs = llama_cpp_logprobs(path, sequence)
    sources = [("GGUF", path)]
    if weight_type == "F32":
        hf_dir = os.path.join(work, f"{name}-hf")
        write_hf(hf_dir, tensors, config)
        sources.append(("HF safetensors", hf_dir))
        exact = theirs
    else:
        qtype = gguf.GGMLQuantizationType[weight_type]
        dequantized = {k: gguf.quants.dequantize(gguf.quants.quantize(v, qtype), qtype)
                       if v.ndim == 2 and k != "model.embed_tokens.weight" else v for k, v in tensors.items()}
        float_path = os.path.join(work, f"{name}-dequantized.gguf")
        write_gguf(float_path, arch, "F32", rope, dequantized, config)
        exact = llama_cpp_logprobs(float_path, sequence)
    theirs_error = float(np.abs(theirs - exact).max())
    rows = []
    for source, model in sources:
        ours = our_logprobs(binary, model, sequence, work)
        assert ours.shape == theirs.shape, f"{ours.shape} rows of log-probabilities against {theirs.shape}"
        difference = float(np.abs(ours - theirs).max())
        if weight_type == "F32":
            ours_error, margin = difference, FLOAT_MARGIN
            ok_numbers = difference <= FLOAT_TOLERANCE
        else:
            ours_error, margin = float(np.abs(ours - exact).max()), QUANT_MARGIN
            ok_numbers = ours_error <= QUANT_ERROR_RATIO * theirs_error + 0.02
        near_ties, first_part, wrong = tokens_agree(ours, theirs, margin)
        ok = ok_numbers and wrong == 0
        rows.append((ok, {
            "case": name,
            "ours from": source,
            "positions": len(theirs),
            "max Δ log p, ours − llama.cpp": f"{difference:.4f}",
            "llama.cpp − float": "-" if weight_type == "F32" else f"{theirs_error:.3f}",
            "ours − float": "-" if weight_type == "F32" else f"{ours_error:.3f}",
            "near ties": near_ties,
            "first other token": "-" if first_part is None else PROMPT - 1 + first_part,
            "wrong tokens": wrong,
            "result": "ok" if ok else "FAIL",
        }))
    return rows


def compare_transformers(binary, work):
    """Rows of the HF table: ours on each float case's HF files, f32 and bf16, against the
    committed transformers log-probabilities at its best tokens, position by position."""
    with open(REFERENCE) as f:
        reference = json.load(f)
    rows = []
    for entry in reference["cases"]:
        arch, _, rope = CASES[entry["case"]]
        tensors, config = random_model(arch, rope, reference["seed"])
        if weights_hash(tensors) != entry["weights_sha256"]:
            sys.exit(f"{REFERENCE} is stale for {entry['case']}: re-run transformers_reference.py")
        directory = os.path.join(work, f"{entry['case']}-{entry['dtype'].lower()}-hf")
        write_hf(directory, tensors, config, entry["dtype"])
        ours = our_logprobs(binary, directory, entry["sequence"], work)
        ids, theirs = np.array(entry["top_ids"]), np.array(entry["top_logprobs"])
        assert ours.shape[0] == len(ids), f"{ours.shape[0]} positions against {len(ids)}"
        difference = float(np.abs(np.take_along_axis(ours, ids, axis=1) - theirs).max())
        near_ties = wrong = 0
        for pos in range(len(ids)):
            mine, tie = int(np.argmax(ours[pos])), theirs[pos][0] - theirs[pos][1] < FLOAT_MARGIN
            near_ties += tie
            wrong += mine != ids[pos][0] and not (tie and mine == ids[pos][1])
        ok = difference <= FLOAT_TOLERANCE and wrong == 0
        rows.append((ok, {
            "case": entry["case"],
            "HF weights": entry["dtype"].lower(),
            "positions": len(ids),
            f"max Δ log p of transformers' best {REFERENCE_TOP}": f"{difference:.4f}",
            "near ties": near_ties,
            "wrong tokens": wrong,
            "result": "ok" if ok else "FAIL",
        }))
    return rows, f"transformers {reference['transformers']}, torch {reference['torch']}"


# SentencePiece vocabularies read from GGUF metadata alone: a small vocabulary learnt from this
# text, with and without the space before the text (Llama 2 and Mistral have it, Gemma not).
SPM_CORPUS = """the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs.
Tokenizers split text into pieces: the pieces are words, parts of words and single letters.
numbers like 2024 and 3.14 stay digits, and   runs of spaces stay spaces.
"""
SPM_TEXTS = [
    "the quick brown fox",
    " the lazy dog sleeps",
    "Tokenizers split   text\ninto pieces.",
    "héllo wörld — naïve café",
    "日本語のテキスト and emoji 🦊🐶",
    "numbers: 2024, 3.14, -7",
    "  leading and trailing spaces  ",
    "\n\nnew lines\tand tabs\n",
    "x",
    "",
    "the</s> control token's text in the middle",
]


def spm_vocabulary():
    """(tokens, scores, types) of a SentencePiece-style vocabulary: control and unknown tokens,
    the 256 byte tokens, every character of the corpus, and its frequent pieces (up to 6
    characters, `▁` for spaces) scored by frequency."""
    text = "▁" + SPM_CORPUS.replace(" ", "▁").replace("\n", "▁")
    counts = {}
    for length in range(2, 7):
        for i in range(len(text) - length + 1):
            piece = text[i:i + length]
            if "▁" in piece[1:]:
                continue
            counts[piece] = counts.get(piece, 0) + 1
    pieces = sorted((p for p, c in counts.items() if c >= 2), key=lambda p: (-counts[p], p))[:300]
    chars = sorted(set(text))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-100.0 - i for i in range(len(chars))]
    scores += [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def write_spm_gguf(path, add_space_prefix):
    tokens, scores, types = spm_vocabulary()
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def compare_tokenizers(tokenize_binary, work):
    """Rows of the tokenizer table: ours against llama.cpp's tokens and decoding of each text."""
    rows = []
    for name, prefix in (("sentencepiece, space prefix", True), ("sentencepiece, no prefix", False)):
        path = os.path.join(work, f"spm-{prefix}.gguf")
        write_spm_gguf(path, prefix)
        from llama_cpp import Llama
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        lines = "".join(json.dumps(t) + "\n" for t in SPM_TEXTS)
        out = subprocess.run([tokenize_binary, path], input=lines, capture_output=True, text=True, check=True)
        answers = out.stdout.splitlines()
        same_ids = same_text = 0
        for i, text in enumerate(SPM_TEXTS):
            ours, our_text = json.loads(answers[2 * i]), json.loads(answers[2 * i + 1])
            theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
            their_text = llm.detokenize(theirs).decode(errors="replace")
            # llama-cpp-python keeps the space the text was given; ours takes it off again, as
            # transformers does, so what comes back is what went in.
            if prefix and their_text.startswith(" "):
                their_text = their_text[1:]
            if ours == theirs:
                same_ids += 1
            else:
                print(f"{name}: {text!r}: ours {ours}, llama.cpp {theirs}", file=sys.stderr)
            if our_text == their_text:
                same_text += 1
            else:
                print(f"{name}: {text!r} decodes to {our_text!r} here, {their_text!r} in llama.cpp", file=sys.stderr)
        ok = same_ids == same_text == len(SPM_TEXTS)
        rows.append((ok, {"tokenizer": name, "texts": len(SPM_TEXTS), "same tokens": same_ids,
                          "same decoding": same_text, "result": "ok" if ok else "FAIL"}))
    return rows


# The real Gemma 3 270M (Q4_K_M) against llama.cpp: prompts tokenized by both, continued
# greedily by llama.cpp, scored by both (20 short ones, then a long one).
REAL_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, astronauts landed on",
    "A haiku about autumn leaves:\n",
    "The quick brown fox",
    "To make a cup of tea, first",
    "Photosynthesis is the process by which",
    "Les montagnes de Suisse sont",
    "The largest planet in our solar system is",
    "SELECT name, age FROM users WHERE",
    "My favourite book is",
    "The theory of relativity states that",
    "Ingredients for pancakes: flour, eggs,",
    "Q: What is 12 times 12?\nA:",
    "The Great Wall of China was built",
    "Dear customer, thank you for your order.",
    "日本の首都は",
]
# And one prompt longer than Gemma 3's 512-position window, so its local layers' limit is in play.
_COLORS, _ANIMALS = ["red", "blue", "green", "white", "black"], ["fox", "owl", "bear", "deer", "hare", "wolf"]
_CITIES = ["Lyon", "Oslo", "Quito", "Hanoi", "Perth", "Cusco", "Dakar"]
REAL_PROMPTS.append(
    " ".join(f"Fact {i}: the {_COLORS[i % 5]} {_ANIMALS[i % 6]} lives in {_CITIES[i % 7]}." for i in range(70))
    + " Question: where does the blue owl live? Answer:"
)
REAL_TOKENS = 64
# Where llama.cpp's best tokens are closer than this, the engines' quantized arithmetic may pick
# any of them: SmolLM2 and Gemma 3 part from llama.cpp where its best two or three are within
# about 0.2 of each other, and move a chosen token's log-probability by up to about 0.35.
REAL_MARGIN = 0.3


def compare_real_model(path, logits_binary, tokenize_binary, work):
    """Rows for the real model: per prompt, whether both tokenize it alike, and where (if
    anywhere) our greedy token first differs from llama.cpp's, and whether that is a near tie."""
    llm = llama_cpp(path, context=1280)
    lines = "".join(json.dumps(p) + "\n" for p in REAL_PROMPTS)
    ours_tokens = subprocess.run([tokenize_binary, path], input=lines, capture_output=True, text=True, check=True)
    ours_tokens = [json.loads(line) for line in ours_tokens.stdout.splitlines()[0::2]]
    runs = []
    for prompt in REAL_PROMPTS:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        sequence = llama_cpp_continuation(llm, tokens, REAL_TOKENS)
        theirs = log_softmax(llm.scores[len(tokens) - 1 : len(sequence)])
        runs.append((tokens, sequence, theirs))
    sequences = os.path.join(work, "real-sequences.txt")
    with open(sequences, "w") as f:
        for tokens, sequence, _ in runs:
            f.write(f"{len(tokens)}:{','.join(map(str, sequence))}\n")
    out = os.path.join(work, "real-ours.f32")
    subprocess.run([logits_binary, path, out, "@" + sequences], check=True)
    vocab = runs[0][2].shape[1]
    ours_all = np.fromfile(out, dtype="<f4").astype(np.float64).reshape(-1, vocab)
    rows, at = [], 0
    for prompt, mine_tokens, (tokens, sequence, theirs) in zip(REAL_PROMPTS, ours_tokens, runs):
        ours = ours_all[at : at + len(theirs)]
        at += len(theirs)
        # Up to where our greedy choice first differs from llama.cpp's: there ours must be one of
        # llama.cpp's near-best, within REAL_MARGIN of its best. After it, free generations part.
        part, verdict = None, "identical"
        for pos in range(len(theirs)):
            best = int(np.argmax(theirs[pos]))
            mine = int(np.argmax(ours[pos]))
            if mine != best:
                margin = theirs[pos][best] - theirs[pos][mine]
                rank = int((theirs[pos] > theirs[pos][mine]).sum()) + 1
                near = margin < REAL_MARGIN
                part, verdict = pos, f"parts at {pos}: llama.cpp's {rank}{'nd' if rank == 2 else 'rd' if rank == 3 else 'th'}, {margin:.3f} below{'' if near else ' — NOT a near tie'}"
                break
        checked = len(theirs) if part is None else part + 1
        difference = max(abs(ours[i][sequence[len(tokens) + i]] - theirs[i][sequence[len(tokens) + i]])
                         for i in range(min(checked, len(theirs) - 1)))
        ok = mine_tokens == tokens and (part is None or near)
        rows.append((ok, {
            "prompt": prompt[:28].replace("\n", "\\n") + ("…" if len(prompt) > 28 else ""),
            "same tokens": "yes" if mine_tokens == tokens else "NO",
            "greedy": verdict,
            "max Δ log p of llama.cpp's token, to there": f"{difference:.3f}",
            "result": "ok" if ok else "FAIL",
        }))
    return rows


def print_table(rows):
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logits", required=True, help="the engine's `logits` example binary")
    parser.add_argument("--tokenize", required=True, help="the engine's `tokenize` example binary")
    parser.add_argument("--work", help="where the models are written (default: a temporary directory)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--real-model", help="a real GGUF model to compare over 21 prompts (Gemma 3 270M in the tests)")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        os.makedirs(work, exist_ok=True)
        rows = []
        for name in args.case or CASES:
            for ok, row in run_case(name, args.logits, work, args.seed):
                failed += not ok
                rows.append(row)
                print(f"{name} ({row['ours from']}): {row['result']}", file=sys.stderr, flush=True)
        transformers_rows, versions = [], ""
        if not args.case:
            scored, versions = compare_transformers(args.logits, work)
            for ok, row in scored:
                failed += not ok
                transformers_rows.append(row)
        tokenizer_rows = []
        for ok, row in compare_tokenizers(args.tokenize, work):
            failed += not ok
            tokenizer_rows.append(row)
        real_rows = []
        if args.real_model:
            for ok, row in compare_real_model(args.real_model, args.logits, args.tokenize, work):
                failed += not ok
                real_rows.append(row)
    print_table(rows)
    if transformers_rows:
        print()
        print(f"The float cases in HF layout against {versions} (CPU, float32; committed reference):")
        print()
        print_table(transformers_rows)
    print()
    print_table(tokenizer_rows)
    if real_rows:
        print()
        print(f"{os.path.basename(args.real_model)}, {len(real_rows)} prompts, {REAL_TOKENS} greedy tokens each:")
        print()
        print_table(real_rows)
    if failed:
        sys.exit(f"{failed} comparisons differ from llama.cpp or transformers beyond their tolerance")

if __name__ == "__main__":
    main()
