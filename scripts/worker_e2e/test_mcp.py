"""MCP tools against a real MCP server (the official Python SDK, scripts/mcp/weather_server.py,
on a loopback port).

- The registrant's side: `openledger-worker mcp definition` gives the definition hash
  `registry.register_tool` takes. The hash is recomputed here from the served definition with
  Python's own JSON and blake2b, so a registrant in any language gets the same value; a loopback
  endpoint is refused unless allowed, and errors are one-line exits.
- The worker's tool loop, through the `openai` client (`extra_body={"mcp_tools": [...]}`): a call
  made with the model's arguments and its exact result handed back to the model, its attribution
  entry; a failing tool shown to the model and not billed; a changed definition refused (409); a
  loopback endpoint refused by a worker that was not told to allow it (403); `tool_choice` naming
  the client's own tool beside MCP tools; the bad inputs.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import unittest
import zlib
from pathlib import Path

import openai

from harness import BASE, GERMANY, WorkerTestCase, raw_request, worker_bin

SERVER = Path(__file__).resolve().parent.parent / "mcp" / "weather_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canonical(definition: dict) -> str:
    """The chain's rule: name, description and inputSchema, keys sorted, no whitespace."""
    picked = {k: definition[k] for k in ("name", "description", "inputSchema") if definition.get(k) is not None}
    return json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def start_server(cls) -> str:
    """Starts the weather server on a free loopback port for the class; its endpoint."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cls.addClassCleanup(server.wait, timeout=10)
    cls.addClassCleanup(server.terminate)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return f"http://127.0.0.1:{port}/mcp"


def served_hash(endpoint: str, tool: str) -> str:
    done = subprocess.run([worker_bin(), "mcp", "definition", "--endpoint", endpoint, "--tool", tool, "--allow-private"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)["definition_hash"]


def weather(city: str) -> str:
    """What the server answers for `city` (its own rule, restated)."""
    seed = zlib.crc32(city.strip().lower().encode())
    return f"{city}: {seed % 35 - 5} °C, {['sunny', 'cloudy', 'rain', 'snow', 'fog'][seed % 5]}"


class McpDefinitionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.endpoint = start_server(cls)

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


WEATHER_ID, BROKEN_ID, CHANGED_ID = 7, 8, 9
ADD = {"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"], "additionalProperties": False}}}


class McpToolLoopTest(WorkerTestCase):
    """A worker that declares three tools of the weather server (`serve --mcp-tools`)."""

    @classmethod
    def setUpClass(cls) -> None:
        endpoint = start_server(cls)
        tools = [
            {"id": WEATHER_ID, "endpoint": endpoint, "tool": "get_weather", "price": "1000",
             "definition_hash": served_hash(endpoint, "get_weather")},
            {"id": BROKEN_ID, "endpoint": endpoint, "tool": "broken", "price": "1000"},
            # Registered with another tool's definition: what the server serves now differs.
            {"id": CHANGED_ID, "endpoint": endpoint, "tool": "slow", "price": "5",
             "definition_hash": served_hash(endpoint, "get_weather")},
        ]
        cls.tools_file = cls.make_tmp("mcp-tools-") / "tools.json"
        cls.tools_file.write_text(json.dumps(tools))
        cls.start_bare_worker("mcp", "--mcp-tools", str(cls.tools_file), "--mcp-allow-private", "--max-tokens", "200")

    def chat(self, content: str, mcp_tools: list[int], **kwargs):
        extra = {"mcp_tools": mcp_tools}
        if "max_tool_calls" in kwargs:
            extra["max_tool_calls"] = kwargs.pop("max_tool_calls")
        return self.client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": content}],
            temperature=0, max_tokens=kwargs.pop("max_tokens", 60), extra_body=extra, **kwargs)

    def test_a_call_is_made_and_its_result_handed_back(self):
        response = self.chat("What is the weather in Oslo?", [WEATHER_ID], max_tool_calls=1,
                             tool_choice={"type": "function", "function": {"name": "get_weather"}})
        extra = response.model_extra
        calls = extra["mcp_calls"]
        self.assertEqual(len(calls), 1, calls)
        call = calls[0]
        self.assertEqual((call["tool"], call["name"], call["is_error"], call["billed"]), (WEATHER_ID, "get_weather", False, True))
        self.assertTrue(call["id"].startswith("call_"), call)
        city = json.loads(call["arguments"])["city"]
        self.assertEqual(call["result"], weather(city), "the server's answer to the model's arguments")
        self.assertIn({"source": "tool", "tool": WEATHER_ID, "calls": 1}, extra["attribution"])
        # The budget of one call was spent: the last round answered in text.
        choice = response.choices[0]
        self.assertIsNone(choice.message.tool_calls)
        self.assertTrue(choice.message.content)
        self.assertNotIn("<tool_call>", choice.message.content)
        # Two rounds, the second's prompt holding the first's call and its result.
        first = self.client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
            temperature=0, max_tokens=1, extra_body={"mcp_tools": [WEATHER_ID]}, tool_choice="required")
        self.assertGreater(response.usage.prompt_tokens, 2 * first.usage.prompt_tokens)
        self.assertEqual(response.usage.total_tokens, response.usage.prompt_tokens + response.usage.completion_tokens)

    def test_a_failing_tool_is_shown_to_the_model_and_not_billed(self):
        response = self.chat("Is the weather service up?", [BROKEN_ID], max_tool_calls=1, tool_choice="required")
        calls = response.model_extra["mcp_calls"]
        self.assertEqual(len(calls), 1, calls)
        self.assertEqual((calls[0]["name"], calls[0]["is_error"], calls[0]["billed"]), ("broken", True, False))
        self.assertIn("the weather service is unreachable", calls[0]["result"])
        self.assertNotIn("attribution", response.model_extra, "an unbilled call is owed nothing")
        self.assertTrue(response.choices[0].message.content)

    def test_calls_stop_at_max_tool_calls(self):
        # `required` holds for the first round only; the budget bounds the rest.
        for budget in (1, 2):
            with self.subTest(budget=budget):
                response = self.chat("Weather in Lima, then in Kyoto?", [WEATHER_ID], max_tool_calls=budget,
                                     tool_choice="required", max_tokens=120)
                calls = response.model_extra["mcp_calls"]
                self.assertGreaterEqual(len(calls), 1)
                self.assertLessEqual(len(calls), budget)
                billed = sum(1 for c in calls if c["billed"])
                self.assertIn({"source": "tool", "tool": WEATHER_ID, "calls": billed}, response.model_extra["attribution"])

    def test_the_clients_own_tool_can_be_named_beside_mcp_tools(self):
        response = self.chat("What is 2 plus 3?", [WEATHER_ID], tools=[ADD], max_tokens=120,
                             tool_choice={"type": "function", "function": {"name": "add"}})
        choice = response.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertTrue(choice.message.tool_calls)
        self.assertEqual({c.function.name for c in choice.message.tool_calls}, {"add"})
        self.assertEqual(response.model_extra["mcp_calls"], [])

    def test_a_changed_definition_is_refused(self):
        with self.assertRaises(openai.APIStatusError) as caught:
            self.chat("Wait a second.", [CHANGED_ID])
        self.assert_status_error(caught.exception, 409, code="tool_definition_changed", param="mcp_tools")

    def test_bad_requests_name_their_field(self):
        cases = [
            (dict(mcp_tools=[99]), 404, "mcp_tools"),
            (dict(mcp_tools=[WEATHER_ID, WEATHER_ID]), 400, "mcp_tools"),
            (dict(mcp_tools=[WEATHER_ID], max_tool_calls=0), 400, "max_tool_calls"),
            (dict(mcp_tools=[WEATHER_ID], max_tool_calls=9), 400, "max_tool_calls"),
            (dict(mcp_tools=[WEATHER_ID], n=2), 400, "n"),
            (dict(mcp_tools=[WEATHER_ID], stream=True), 400, "stream"),
            (dict(mcp_tools=[WEATHER_ID], tool_choice="none"), 400, "tool_choice"),
            (dict(mcp_tools=[WEATHER_ID], tools=[{"type": "function", "function": {"name": "get_weather"}}]), 400, "mcp_tools"),
            (dict(mcp_tools=[WEATHER_ID], response_format={"type": "json_object"}), 400, "response_format"),
        ]
        for body, status, param in cases:
            with self.subTest(body=body):
                request = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, **body}
                status_got, _, raw = raw_request(self.worker.port, "POST", "/v1/chat/completions", json.dumps(request).encode())
                self.assertEqual(status_got, status, raw)
                self.assert_error_body(raw, status, param=param)
        self.assert_still_serving()


class McpRefusedEndpointTest(WorkerTestCase):
    """Without --mcp-allow-private, a tool on a loopback endpoint is refused before it is called."""

    @classmethod
    def setUpClass(cls) -> None:
        endpoint = start_server(cls)
        tools_file = cls.make_tmp("mcp-tools-") / "tools.json"
        tools_file.write_text(json.dumps([{"id": 1, "endpoint": endpoint, "tool": "get_weather"}]))
        cls.start_bare_worker("mcp-refused", "--mcp-tools", str(tools_file))

    def test_a_loopback_endpoint_is_refused(self):
        with self.assertRaises(openai.APIStatusError) as caught:
            self.client.chat.completions.create(model=BASE, messages=GERMANY, max_tokens=5,
                                                extra_body={"mcp_tools": [1]})
        error = self.assert_status_error(caught.exception, 403, code="tool_endpoint_refused", param="mcp_tools")
        self.assertIn("--mcp-allow-private", error["message"])
        self.assert_still_serving()
