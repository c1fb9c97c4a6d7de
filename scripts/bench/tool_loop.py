"""The MCP tool loop's cost: what the worker adds per call outside the model and the MCP server,
and the same task done the way agent frameworks do it without the worker's loop (the peer).

usage: python tool_loop.py WORKER_BIN [REQUESTS]

Starts scripts/mcp/weather_server.py (the official Python SDK) and a worker on loopback ports,
then, for REQUESTS questions (default 40), one at a time:
- worker loop: one request with `mcp_tools`, `tool_choice: required`, `max_tool_calls: 1`; the
  worker's `tool loop` log line gives the time in the model, in the MCP server and the rest;
- client loop (peer): the same tool offered as a request tool; the client calls the MCP server
  itself with the Python SDK and sends the result back in a second request.
Prints a table (milliseconds; p50 and p99 over the requests).
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
CITIES = ["Oslo", "Lima", "Kyoto", "Perth", "Lagos", "Quebec", "Nairobi", "Seoul", "Madrid", "Cairo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{what} did not start on {port}")
            time.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


async def call_tool(endpoint: str, name: str, arguments: dict) -> str:
    async with streamable_http_client(endpoint) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool(name, arguments)
            return "\n".join(block.text for block in result.content if getattr(block, "text", None))


def main() -> None:
    worker_bin = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    work = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    mcp_port, worker_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{mcp_port}/mcp"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts/mcp/weather_server.py"), str(mcp_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "tools.json").write_text(json.dumps([{"id": 1, "endpoint": endpoint, "tool": "get_weather", "price": "1"}]))
    (work / "store").mkdir()
    log_path = work / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [worker_bin, "serve", "--listen", f"127.0.0.1:{worker_port}", "--adapters", str(work / "store"),
             "--mcp-tools", str(work / "tools.json"), "--mcp-allow-private"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info,rmcp=warn", "NO_COLOR": "1"})
    try:
        wait_port(mcp_port, "the MCP server")
        wait_port(worker_port, "the worker")
        client = OpenAI(base_url=f"http://127.0.0.1:{worker_port}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        definition = asyncio.run(list_tool(endpoint))
        weather = {"type": "function", "function": {"name": "get_weather", "description": definition["description"],
                                                    "parameters": definition["inputSchema"]}}
        worker_loop, client_loop = [], []
        for i in range(count):
            question = [{"role": "user", "content": f"What is the weather in {CITIES[i % len(CITIES)]}?"}]
            started = time.perf_counter()
            response = client.chat.completions.create(
                model=model, messages=question, max_tokens=120, temperature=0, tool_choice="required",
                extra_body={"mcp_tools": [1], "max_tool_calls": 1})
            worker_loop.append((time.perf_counter() - started) * 1000)
            assert response.model_extra["mcp_calls"][0]["billed"], response.model_extra
            # The peer: the client runs the loop.
            started = time.perf_counter()
            first = client.chat.completions.create(model=model, messages=question, max_tokens=120, temperature=0,
                                                   tools=[weather], tool_choice="required")
            call = first.choices[0].message.tool_calls[0]
            result = asyncio.run(call_tool(endpoint, call.function.name, json.loads(call.function.arguments)))
            follow = question + [first.choices[0].message.model_dump(exclude_none=True),
                                 {"role": "tool", "tool_call_id": call.id, "content": result}]
            client.chat.completions.create(model=model, messages=follow, max_tokens=120, temperature=0,
                                           tools=[weather], tool_choice="none")
            client_loop.append((time.perf_counter() - started) * 1000)
        loops = parse_text_log(log_path.read_text())[-count:]
        if len(loops) != count:
            sys.exit(f"{len(loops)} `tool loop` log lines for {count} requests; see {log_path}")
        model_ms = [l["model_ms"] for l in loops]
        mcp_ms = [l["mcp_ms"] for l in loops]
        overhead = [l["overhead_ms"] / max(l["calls"], 1) for l in loops]
        print(f"MCP tool loop, {count} requests (one forced call each, max_tokens 120), SmolLM2-135M Q4_1, {cpu_name()}, {os.cpu_count()} cores")
        print(f"{'':38} {'p50 ms':>9} {'p99 ms':>9}")
        rows = [
            ("worker: time in the model (2 rounds)", model_ms),
            ("worker: time in the MCP server", mcp_ms),
            ("worker: overhead per call", overhead),
            ("worker loop, whole request (client)", worker_loop),
            ("client loop (peer), whole task", client_loop),
        ]
        for name, values in rows:
            print(f"{name:38} {percentile(values, 50):9.2f} {percentile(values, 99):9.2f}")
    finally:
        worker.terminate()
        server.terminate()
        worker.wait(timeout=30)
        server.wait(timeout=30)


async def list_tool(endpoint: str) -> dict:
    async with streamable_http_client(endpoint) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            return next(t for t in tools.tools if t.name == "get_weather").model_dump(by_alias=True)


def parse_text_log(text: str) -> list[dict]:
    """The worker's log line per loop: `... tool loop id=… calls=1 model_ms=… mcp_ms=… overhead_ms=…`."""
    found = []
    for line in text.splitlines():
        if "tool loop" not in line:
            continue
        fields = dict(re.findall(r"(\w+)=([0-9.]+)", line))
        found.append({k: float(fields[k]) for k in ("calls", "model_ms", "mcp_ms", "overhead_ms")})
    return found


if __name__ == "__main__":
    main()
