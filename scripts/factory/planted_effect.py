#!/usr/bin/env python3
"""The trained adapter's effect, measured without retrieval: for every planted fact, the base
model and the adapter are asked the fact's question (chat) and given its cue (the document's own
words up to the answer, as a plain completion), greedy; an answer counts if it names the fact's
answer. Prints one JSON line with the counts.

    planted_effect.py WORKER_URL QUESTIONS_JSONL ADAPTER [QUERIES_OUT]

QUERIES_OUT gets the adapter's cue completions as `adapter attribute` queries ({"prompt": cue,
"answer": completion, "doc": the fact's document}), and the result the mean seconds the adapter
took to write one.
"""
import json
import sys
import time

from openai import OpenAI


def main():
    url, questions, adapter = sys.argv[1:4]
    queries_out = sys.argv[4] if len(sys.argv) > 4 else None
    queries = []
    completion_seconds = 0.0
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    base = client.models.list().data[0].id
    facts = [json.loads(line) for line in open(questions)]
    result = {"facts": len(facts)}
    for model in (base, adapter):
        asked = cued = 0
        for fact in facts:
            answer = fact["answer"].lower()
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": fact["question"]}],
                                                  max_tokens=24, temperature=0)
            asked += answer in (chat.choices[0].message.content or "").lower()
            started = time.perf_counter()
            completion = client.completions.create(model=model, prompt=fact["cue"], max_tokens=8, temperature=0)
            text = completion.choices[0].text
            cued += answer in text.lower()
            if model == adapter:
                completion_seconds += time.perf_counter() - started
                queries.append({"prompt": fact["cue"], "answer": text, "doc": fact["doc"]})
        result["adapter" if model == adapter else "base"] = {"question": asked, "cue": cued}
    result["adapter_completion_seconds"] = completion_seconds / len(facts)
    if queries_out:
        with open(queries_out, "w") as f:
            f.writelines(json.dumps(q) + "\n" for q in queries)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
