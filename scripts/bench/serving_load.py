#!/usr/bin/env python3
"""The load of the serving benchmark (scripts/bench-serving.sh): `--concurrency` clients, each
sending `--requests` streamed completions one after another through the official `openai`
client, on the base model or each on an adapter of its own. Prints one JSON object: aggregate
completion tokens/s over the wall time of the whole load, and the time to first token's p50 and
p99 over every request.

Both servers get the same prompts as text on /v1/completions (no chat template in between) and
greedy decoding. An adapter is named in `model` for the worker; llama-server serves one model
and takes per-request adapter scales in `lora` (its `--lora-init-without-apply` leaves every
adapter at 0 otherwise).
"""
import argparse
import asyncio
import json
import statistics
import sys
import time

import openai

PROMPTS = [
    "Once upon a time, in a kingdom by the sea, there lived a dragon who could not fly. Every morning",
    "The lighthouse keeper climbed the stairs as the storm rolled in from the west. He remembered",
    "In the year 2150, the first city on Mars held its election. The candidates were",
    "The old recipe book fell open at a page stained with chocolate. It described",
    "Two friends set out to cross the desert with three camels and a map that",
    "The robot looked at the garden it had planted and wondered why the roses",
    "At the edge of the forest stood a library that appeared only at midnight. Inside,",
    "The sailor woke on an island with no memory of the shipwreck, only a compass that",
]


async def one_request(args, index, adapter, results):
    # A client, and so a connection, per request: llama-server closes connections idle for a few
    # seconds, and a pooled one it closed fails the next request sent on it.
    client = openai.AsyncOpenAI(base_url=args.url, api_key="unused", max_retries=0, timeout=600)
    extra = {}
    model = args.model
    if adapter is not None:
        if args.server == "llama-server":
            extra["lora"] = [{"id": adapter, "scale": 1.0}]
        else:
            model = f"{args.adapter_prefix}{adapter}"
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = await client.completions.create(
        model=model,
        prompt=PROMPTS[index % len(PROMPTS)],
        max_tokens=args.max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra or None,
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            if first is None:
                first = time.perf_counter()
    done = time.perf_counter()
    await client.close()
    tokens = usage.completion_tokens if usage is not None else chunks
    results.append({"ttft": (first or done) - started, "tokens": tokens, "seconds": done - started, "usage": usage is not None,
                    "started": started, "index": index})


async def client_loop(args, c, results):
    adapter = c % args.adapters if args.adapters else None
    for r in range(args.requests):
        await one_request(args, c * args.requests + r, adapter, results)


async def run(args):
    # One request first: both servers settle (first touches of weights and buffers).
    await one_request(args, 0, 0 if args.adapters else None, [])
    results = []
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(args, c, results) for c in range(args.concurrency)))
    wall = time.perf_counter() - started
    if args.trace:
        # Each request: when it was sent (from the run's start) and its time to first token.
        for r in sorted(results, key=lambda r: r["started"]):
            print(f"request {r['index']:3d}: sent at {1e3 * (r['started'] - started):8.0f} ms, "
                  f"first token after {1e3 * r['ttft']:6.0f} ms", file=sys.stderr)
    ttfts = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]
    print(json.dumps({
        "server": args.server,
        "adapters": args.adapters,
        "requests": len(results),
        "completion_tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_second": tokens / wall,
        "ttft_p50_ms": 1e3 * statistics.median(ttfts),
        "ttft_p99_ms": 1e3 * p99,
        "tokens_counted_from_usage": all(r["usage"] for r in results),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the server's /v1 base URL (loopback)")
    ap.add_argument("--server", choices=["openledger", "llama-server"], required=True)
    ap.add_argument("--model", required=True, help="the base model's name")
    ap.add_argument("--adapters", type=int, default=0, help="distinct adapters, client c on adapter c mod N; 0: the base")
    ap.add_argument("--adapter-prefix", default="a", help="the worker's adapter names: PREFIX0, PREFIX1, ...")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--trace", action="store_true", help="print each request's send time and time to first token (stderr)")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
