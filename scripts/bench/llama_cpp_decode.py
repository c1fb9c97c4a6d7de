#!/usr/bin/env python3
"""llama.cpp's side of the worker benchmark (scripts/bench-worker.sh).

Loads the same GGUF with llama-cpp-python, feeds the exact prompt token ids the Rust benchmark uses
(`bench_worker --print-prompts`), decodes greedily and times the token stream the way the Rust side
does: decode tokens/s is (tokens - 1) over the time from the first token to the last (EOS is
ignored: the stream is cut after --tokens tokens), prefill tokens/s is the long prompt's length
over its time to first token. The same decode held to the benchmark's JSON schema by llama.cpp's
own grammar (`LlamaGrammar.from_json_schema`, what llama-cpp-python's `response_format` uses)
gives the constrained rate. Prints one JSON object on stdout.
"""
import argparse
import json
import statistics
import sys
import time

import llama_cpp


def stream(llm, tokens, n, grammar=None):
    """Times of the first n sampled tokens, and the tokens, after a fresh reset."""
    llm.reset()  # n_tokens = 0: no KV-cache prefix reuse between runs
    started = time.perf_counter()
    times, out = [], []
    eos = llm.token_eos()
    for token in llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, grammar=grammar):
        if grammar is not None and token == eos:
            break  # the grammar is complete
        times.append(time.perf_counter())
        out.append(token)
        if len(out) == n:
            break
    return started, times, out


def perf(llm):
    """llama.cpp's own counters (eval excludes sampling and Python), if this version has them."""
    try:
        data = llama_cpp.llama_perf_context(llm._ctx.ctx)
        return {"t_eval_ms": data.t_eval_ms, "n_eval": data.n_eval, "t_p_eval_ms": data.t_p_eval_ms, "n_p_eval": data.n_p_eval}
    except Exception:  # noqa: BLE001 - informational only
        return None


def perf_reset(llm):
    try:
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    except Exception:  # noqa: BLE001
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON from `bench_worker --print-prompts`")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=2048,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    decode_prompt, prefill_prompt = prompts["decode"], prompts["prefill"]
    eos = llm.token_eos()

    stream(llm, decode_prompt, 16)  # warm-up
    decode, perf_decode, eos_at = [], [], None
    for _ in range(args.runs):
        perf_reset(llm)
        _, times, out = stream(llm, decode_prompt, args.tokens)
        p = perf(llm)
        decode.append((len(times) - 1) / (times[-1] - times[0]))
        if p and p["n_eval"] > 1:
            perf_decode.append(p["n_eval"] / (p["t_eval_ms"] / 1e3))
        if eos in out and eos_at is None:
            eos_at = out.index(eos)
        print(f"llama.cpp decode run: {decode[-1]:.1f} tok/s", file=sys.stderr)

    prefill = []
    for _ in range(args.runs):
        started, times, _ = stream(llm, prefill_prompt, 1)
        prefill.append(len(prefill_prompt) / (times[0] - started))

    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(prompts["story_schema"]), verbose=False)
    stream(llm, decode_prompt, 16, grammar)  # warm-up
    constrained, constrained_tokens = [], []
    for _ in range(args.runs):
        _, times, out = stream(llm, decode_prompt, args.tokens, grammar)
        constrained.append((len(times) - 1) / (times[-1] - times[0]))
        constrained_tokens.append(len(out))
        print(f"llama.cpp JSON-schema decode run: {constrained[-1]:.1f} tok/s ({len(out)} tokens)", file=sys.stderr)
    json_text = llm.detokenize(stream(llm, decode_prompt, 48, grammar)[2]).decode("utf-8", "replace")

    result = {
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "tokens": args.tokens,
        "runs": args.runs,
        "decode_tps": statistics.median(decode),
        "decode_tps_runs": [round(x, 2) for x in decode],
        "decode_tps_perf_counters": statistics.median(perf_decode) if perf_decode else None,
        "prefill_prompt_tokens": len(prefill_prompt),
        "prefill_tps": statistics.median(prefill),
        "eos_sampled_at": eos_at,
        "decode_text": llm.detokenize(stream(llm, decode_prompt, 24)[2]).decode("utf-8", "replace"),
        "json_decode_tps": statistics.median(constrained),
        "json_decode_tps_runs": [round(x, 2) for x in constrained],
        "json_decode_tokens": constrained_tokens,
        "json_text": json_text,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
