#!/usr/bin/env python3
"""A real MCP server for the worker's tests and the demo, on the official Python SDK (`mcp`)
over Streamable HTTP at http://127.0.0.1:PORT/mcp, or https:// with a certificate and its key.

Tools:
- get_weather(city): a made-up but fixed report for the city (the same city, the same report);
- broken(): always fails (a `ToolError`, which the SDK answers as a result with isError = true and
  the message for the model);
- slow(seconds): sleeps, so a client's timeout can be tested.

Run: python weather_server.py PORT [CERT_PEM KEY_PEM]
"""
import asyncio
import sys
import zlib

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("openledger-weather")

CONDITIONS = ["sunny", "cloudy", "rain", "snow", "fog"]


@server.tool()
def get_weather(city: str) -> str:
    """The weather now in a city: temperature in degrees Celsius and conditions."""
    seed = zlib.crc32(city.strip().lower().encode())
    return f"{city}: {seed % 35 - 5} °C, {CONDITIONS[seed % len(CONDITIONS)]}"


@server.tool()
def broken() -> str:
    """A tool whose backend is down."""
    raise ToolError("the weather service is unreachable")


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`."""
    await asyncio.sleep(seconds)
    return "done"


if __name__ == "__main__":
    port = int(sys.argv[1])
    if len(sys.argv) == 4:
        # The SDK's own app, served over TLS by the same uvicorn its `run` uses.
        import uvicorn

        app = server.streamable_http_app(host="127.0.0.1")
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                    ssl_certfile=sys.argv[2], ssl_keyfile=sys.argv[3])
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=port)
