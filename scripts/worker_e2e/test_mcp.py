"""MCP tools from the registrant's side: `openledger-worker mcp definition` against a real MCP
server (the official Python SDK, scripts/mcp/weather_server.py, on a loopback port) gives the
definition hash `registry.register_tool` takes. The hash is recomputed here from the served
definition with Python's own JSON and blake2b, so a registrant in any language gets the same
value; a loopback endpoint is refused unless allowed, and errors are one-line exits.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

from harness import worker_bin

SERVER = Path(__file__).resolve().parent.parent / "mcp" / "weather_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canonical(definition: dict) -> str:
    """The chain's rule: name, description and inputSchema, keys sorted, no whitespace."""
    picked = {k: definition[k] for k in ("name", "description", "inputSchema") if definition.get(k) is not None}
    return json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class McpDefinitionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.port = free_port()
        cls.server = subprocess.Popen([sys.executable, str(SERVER), str(cls.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.addClassCleanup(cls.server.wait, timeout=10)
        cls.addClassCleanup(cls.server.terminate)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        cls.endpoint = f"http://127.0.0.1:{cls.port}/mcp"

    def definition(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([worker_bin(), "mcp", "definition", "--endpoint", self.endpoint, *args],
                              capture_output=True, text=True, timeout=60)

    def test_the_hash_is_the_canonical_definitions_blake2b(self):
        done = self.definition("--tool", "get_weather", "--allow-private")
        self.assertEqual(done.returncode, 0, done.stderr)
        out = json.loads(done.stdout)
        served = out["served"]
        self.assertEqual(served["name"], "get_weather")
        self.assertIn("city", served["inputSchema"]["properties"])
        self.assertEqual(out["canonical"], canonical(served))
        expected = "0x" + hashlib.blake2b(canonical(served).encode(), digest_size=32).hexdigest()
        self.assertEqual(out["definition_hash"], expected)
        again = json.loads(self.definition("--tool", "get_weather", "--allow-private").stdout)
        self.assertEqual(again["definition_hash"], expected, "the same definition, the same hash")
        other = json.loads(self.definition("--tool", "slow", "--allow-private").stdout)
        self.assertNotEqual(other["definition_hash"], expected)

    def test_refusals_are_one_line_errors(self):
        cases = [
            (("--tool", "get_weather"), "need --mcp-allow-private"),
            (("--tool", "no_such_tool", "--allow-private"), "offers no tool `no_such_tool`"),
        ]
        for args, reason in cases:
            with self.subTest(args=args):
                done = self.definition(*args)
                self.assertNotEqual(done.returncode, 0, done.stdout)
                self.assertEqual(done.stdout, "")
                lines = [l for l in done.stderr.splitlines() if l.startswith("error:")]
                self.assertEqual(len(lines), 1, done.stderr)
                self.assertIn(reason, lines[0])
