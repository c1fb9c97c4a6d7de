"""Logprobs and several answers (`n`) through the official `openai` client: log-probabilities
that describe the chosen tokens (the greedy token is the most likely, the alternatives are in
order and hold at most all the mass, the tokens' bytes spell the answer), the same seed giving
the same `n` answers whole and streamed, `n` with a JSON schema, and the bad inputs.
"""

from __future__ import annotations

import json
import math

import jsonschema
import openai

from harness import BASE, GERMANY, WorkerTestCase

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def spelled(tokens) -> str:
    return b"".join(bytes(t.bytes) for t in tokens).decode("utf-8")


class LogprobsTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.start_bare_worker("logprobs", "--max-tokens", "256")

    def assert_sensible(self, tokens, top: int, greedy: bool) -> None:
        self.assertTrue(tokens)
        for t in tokens:
            self.assertLessEqual(t.logprob, 0.0, t)
            self.assertEqual(len(t.top_logprobs), top, t)
            alternatives = [a.logprob for a in t.top_logprobs]
            self.assertEqual(alternatives, sorted(alternatives, reverse=True), t)
            self.assertLessEqual(sum(math.exp(a) for a in alternatives), 1.0 + 1e-4, t)
            for a in t.top_logprobs:
                if a.token == t.token and bytes(a.bytes) == bytes(t.bytes):
                    self.assertAlmostEqual(a.logprob, t.logprob, places=5)
            if greedy:
                self.assertEqual((t.top_logprobs[0].token, t.top_logprobs[0].logprob), (t.token, t.logprob), t)

    def test_greedy_logprobs_name_the_chosen_tokens(self):
        response = self.client.chat.completions.create(
            model=BASE, messages=GERMANY, temperature=0, max_tokens=30, logprobs=True, top_logprobs=5
        )
        choice = response.choices[0]
        self.assertEqual(spelled(choice.logprobs.content), choice.message.content)
        self.assertEqual(len(choice.logprobs.content), response.usage.completion_tokens)
        self.assert_sensible(choice.logprobs.content, 5, greedy=True)
        berlin = [t for t in choice.logprobs.content if "Berlin" in t.token]
        self.assertTrue(berlin and math.exp(berlin[0].logprob) > 0.5, choice.logprobs.content)

    def test_sampled_and_streamed_logprobs_match_the_whole_answer(self):
        ask = dict(model=BASE, messages=[{"role": "user", "content": "Write a line about rain."}], temperature=1.0,
                   seed=11, max_tokens=24, logprobs=True, top_logprobs=3)
        whole = self.client.chat.completions.create(**ask).choices[0]
        self.assert_sensible(whole.logprobs.content, 3, greedy=False)
        self.assertEqual(spelled(whole.logprobs.content), whole.message.content)
        streamed, text = [], ""
        for chunk in self.client.chat.completions.create(stream=True, **ask):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].logprobs:
                    streamed.extend(chunk.choices[0].logprobs.content)
        self.assertEqual(text, whole.message.content)
        self.assertEqual([(t.token, t.logprob) for t in streamed], [(t.token, t.logprob) for t in whole.logprobs.content])

    def test_completions_logprobs_are_parallel_lists(self):
        response = self.client.completions.create(
            model=BASE, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=3
        )
        choice = response.choices[0]
        logprobs = choice.logprobs
        self.assertEqual(len(logprobs.tokens), response.usage.completion_tokens)
        for field in (logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset):
            self.assertEqual(len(field), len(logprobs.tokens))
        self.assertEqual("".join(logprobs.tokens), choice.text)
        self.assertEqual(logprobs.text_offset, sorted(logprobs.text_offset))
        for token, chosen, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
            self.assertEqual(len(top), 3)
            self.assertEqual(max(top.values()), chosen, (token, top))
        self.assertIn(" Paris", logprobs.top_logprobs[0], logprobs.top_logprobs[0])

    def test_n_answers_are_reproducible_whole_and_streamed(self):
        ask = dict(model=BASE, messages=[{"role": "user", "content": "Name a colour and say why you like it."}],
                   temperature=1.0, seed=3, max_tokens=20, n=4)
        first = self.client.chat.completions.create(**ask)
        again = self.client.chat.completions.create(**ask)
        texts = [c.message.content for c in first.choices]
        self.assertEqual([c.index for c in first.choices], [0, 1, 2, 3])
        self.assertEqual(texts, [c.message.content for c in again.choices], "the same seed gives the same answers")
        self.assertGreater(len(set(texts)), 1, texts)
        self.assertEqual(first.usage.prompt_tokens, again.usage.prompt_tokens)
        streamed, finishes = [""] * 4, [None] * 4
        for chunk in self.client.chat.completions.create(stream=True, **ask):
            for c in chunk.choices:
                streamed[c.index] += c.delta.content or ""
                finishes[c.index] = c.finish_reason or finishes[c.index]
        self.assertEqual(streamed, texts)
        self.assertEqual(finishes, [c.finish_reason for c in first.choices])

    def test_n_answers_each_follow_the_schema(self):
        response = self.client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "Name a city as JSON."}], temperature=0.9, seed=5,
            max_tokens=60, n=3,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
        )
        self.assertEqual(len(response.choices), 3)
        for choice in response.choices:
            self.assertEqual(choice.finish_reason, "stop", choice.message.content)
            jsonschema.validate(json.loads(choice.message.content), CITY)

    def test_bad_logprobs_and_n_are_400s_naming_the_field(self):
        cases = [
            (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
            (dict(top_logprobs=2), "top_logprobs"),
            (dict(n=9), "n"),
            (dict(n=0), "n"),
        ]
        for extra, param in cases:
            with self.subTest(extra=extra), self.assertRaises(openai.BadRequestError) as caught:
                self.client.chat.completions.create(model=BASE, messages=GERMANY, max_tokens=2, **extra)
            self.assert_status_error(caught.exception, 400, param=param)
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=BASE, prompt="Hi", max_tokens=2, logprobs=21)
        self.assert_status_error(caught.exception, 400, param="logprobs")
        self.assert_still_serving()
