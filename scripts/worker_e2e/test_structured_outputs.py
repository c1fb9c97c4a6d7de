"""Structured outputs through the official `openai` client: `response_format` with JSON objects
and JSON schemas, on chat (whole, streamed, and the client's Pydantic `parse` helper) and on
completions. Every output is validated with the `jsonschema` package against the schema it was
asked for; a grammar keeps even SmolLM2-135M to it. Bad formats are 400s naming the field.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import openai
from pydantic import BaseModel, Field

from harness import BASE, GERMANY, WorkerTestCase, raw_request

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 30},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PRODUCT = {
    "type": "object",
    "properties": {
        "product": {"type": "string", "maxLength": 30},
        "price": {"type": "number", "minimum": 0, "maximum": 10000},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "in_stock": {"type": "boolean"},
    },
    "required": ["product", "price", "currency", "in_stock"],
    "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "day": {"type": "string", "pattern": "^2026-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])$"},
        "guests": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3},
        "venue": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "indoor": {"type": "boolean"}},
            "required": ["name", "indoor"],
            "additionalProperties": False,
        },
    },
    "required": ["title", "day", "guests", "venue"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "product": PRODUCT, "event": EVENT}
SUBJECTS = [
    "a retired sailor", "a young chemist", "a bakery in Lyon", "a bicycle", "a summer wedding",
    "a chess club", "a mountain guide", "a laptop", "a jazz concert", "a city library",
    "a beekeeper", "a pair of boots", "a school trip", "an astronaut", "a coffee grinder",
    "a football final", "a violin teacher", "a garden party", "an umbrella", "a night market",
]
STYLES = ["Describe {}.", "Give me a record for {}.", "Tell me about {} as JSON.", "Invent details of {}.", "{}"]


def json_schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class Weather(BaseModel):
    city: str = Field(max_length=30)
    temperature_c: float = Field(ge=-60, le=60)
    conditions: Literal["sunny", "cloudy", "rain", "snow"]


class StructuredOutputTest(WorkerTestCase):
    """One worker; eight requests at a time share its decode steps."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.start_bare_worker("structured", "--max-queue", "16", "--max-tokens", "256")

    def ask(self, schema_name: str, prompt: str, seed: int, max_tokens: int = 200, **extra):
        return self.client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": prompt}],
            response_format=json_schema_format(schema_name, SCHEMAS[schema_name]),
            temperature=0.8,
            seed=seed,
            max_tokens=max_tokens,
            **extra,
        )

    def test_json_schema_outputs_validate_for_100_prompts(self):
        jobs = []
        for i in range(100):
            subject = SUBJECTS[i % len(SUBJECTS)]
            prompt = STYLES[(i // len(SUBJECTS)) % len(STYLES)].format(subject)
            jobs.append((list(SCHEMAS)[i % len(SCHEMAS)], prompt, i))
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda job: (job, self.ask(*job)), jobs))
        valid = 0
        for (schema_name, prompt, seed), response in answers:
            choice = response.choices[0]
            with self.subTest(schema=schema_name, prompt=prompt, seed=seed):
                self.assertEqual(choice.finish_reason, "stop", choice.message.content)
                jsonschema.validate(json.loads(choice.message.content), SCHEMAS[schema_name])
                valid += 1
        print(f"{valid}/100 valid in {time.monotonic() - started:.1f} s ", end="", flush=True)
        self.assertEqual(valid, 100)

    def test_a_streamed_answer_is_the_same_valid_json(self):
        whole = self.ask("event", "Plan a birthday party.", 7)
        stream = self.ask("event", "Plan a birthday party.", 7, stream=True)
        pieces, finish = [], None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        self.assertEqual("".join(pieces), whole.choices[0].message.content)
        self.assertEqual(finish, "stop")
        jsonschema.validate(json.loads("".join(pieces)), EVENT)

    def test_the_clients_pydantic_parse_helper(self):
        completion = self.client.chat.completions.parse(
            model=BASE,
            messages=[{"role": "user", "content": "What is the weather in Oslo today?"}],
            response_format=Weather,
            temperature=0,
            max_tokens=100,
        )
        parsed = completion.choices[0].message.parsed
        self.assertIsInstance(parsed, Weather, completion.choices[0].message.content)
        self.assertIn(parsed.conditions, ("sunny", "cloudy", "rain", "snow"))

    def test_json_object(self):
        response = self.client.chat.completions.create(
            model=BASE, messages=GERMANY, response_format={"type": "json_object"}, temperature=0, max_tokens=120,
        )
        choice = response.choices[0]
        if choice.finish_reason == "stop":
            self.assertIsInstance(json.loads(choice.message.content), dict)
        else:
            self.assertEqual(choice.finish_reason, "length")
            self.assertTrue(choice.message.content.startswith("{"), choice.message.content)

    def test_completions_take_a_response_format(self):
        body = {
            "model": BASE, "prompt": "A customer record:", "max_tokens": 120, "temperature": 0,
            "response_format": json_schema_format("person", PERSON),
        }
        status, _, raw = raw_request(self.worker.port, "POST", "/v1/completions", json.dumps(body).encode(), timeout=60)
        self.assertEqual(status, 200, raw)
        choice = json.loads(raw)["choices"][0]
        self.assertEqual(choice["finish_reason"], "stop", choice)
        jsonschema.validate(json.loads(choice["text"]), PERSON)

    def test_an_output_cut_by_max_tokens_ends_with_length(self):
        response = self.ask("person", "Describe a retired sailor.", 1, max_tokens=4)
        choice = response.choices[0]
        self.assertEqual(choice.finish_reason, "length")
        self.assertEqual(response.usage.completion_tokens, 4)
        with self.assertRaises(json.JSONDecodeError):
            json.loads(choice.message.content)

    def test_bad_response_formats(self):
        big = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(4000)}}
        cases = [
            ("unknown type", {"type": "xml"}, "response_format.type"),
            ("no json_schema", {"type": "json_schema"}, "response_format.json_schema"),
            ("no name", {"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name"),
            ("bad name", json_schema_format("a b", PERSON), "response_format.json_schema.name"),
            ("schema not an object", json_schema_format("s", "string"), "response_format.json_schema.schema"),
            ("schema over 64 KiB", json_schema_format("s", big), "response_format.json_schema.schema"),
            ("unknown string format", json_schema_format("s", {"type": "string", "format": "no-such-format"}), "response_format"),
            ("unsatisfiable", json_schema_format("s", {"type": "integer", "minimum": 3, "maximum": 1}), "response_format"),
        ]
        for label, response_format, param in cases:
            with self.subTest(label):
                with self.assertRaises(openai.BadRequestError) as caught:
                    self.client.chat.completions.create(
                        model=BASE, messages=GERMANY, response_format=response_format, max_tokens=8,
                    )
                self.assert_status_error(caught.exception, 400, param=param, kind="invalid_request_error")
        self.assert_still_serving()

    def test_a_hostile_schema_is_bounded(self):
        # (a|b)*a(a|b){n} needs 2^n states in a deterministic lexer.
        hostile = {"type": "string", "pattern": "^(a|b)*a(a|b){24}$"}
        started = time.monotonic()
        try:
            response = self.client.chat.completions.create(
                model=BASE, messages=GERMANY, response_format=json_schema_format("h", hostile), max_tokens=40,
            )
            self.assertIn(response.choices[0].finish_reason, ("stop", "length"))
        except openai.APIStatusError as e:
            self.assert_status_error(e, 400, param="response_format")
        elapsed = time.monotonic() - started
        print(f"hostile schema answered in {elapsed:.2f} s ", end="", flush=True)
        self.assertLess(elapsed, 20)
        self.assert_still_serving()
