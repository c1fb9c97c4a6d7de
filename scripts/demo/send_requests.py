"""The demo's requests, sent the way users send them: the official `openai` client with an API
key (the payer's allowance pays), and one request with a payer-signed voucher in a header.

usage: python send_requests.py WORKER_URL API_KEY DEMO_DIR WORKER_BIN CHAIN_WS WORKER_ACCOUNT
Writes DEMO_DIR/requests.json: question, adapter, template, usage, attribution, receipt id.
"""
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from openai import OpenAI

url, api_key, demo_dir, worker_bin, chain_ws, worker_account = sys.argv[1:7]
client = OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
base_model = client.models.list().data[0].id

REQUESTS = [
    ("nature-tutor", "qa", [0], "How do honeybees tell each other where food is?"),
    ("kitchen-helper", "qa", [0], "How hot should the oven be for sourdough bread?"),
    (base_model, None, [0], "Why are spring tides larger than neap tides?"),
    ("nature-tutor", None, None, "Say hello to the bees in one sentence."),
    # The adapter trained on DataNet 0's items, asked without retrieval: its training pays them.
    ("notes-scholar", None, None, "How do honeybees tell each other where food is?"),
]

log = []


def record(question, model, response, template=None):
    extra_fields = response.model_extra or {}
    log.append({
        "question": question,
        "model": model,
        "prompt_template": template,
        "usage": {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens},
        "attribution": extra_fields.get("attribution"),
        "receipt_id": extra_fields["receipt_id"],
    })


for model, template, datanets, question in REQUESTS:
    extra = {}
    if datanets is not None:
        extra["datanets"] = datanets
    if template:
        extra["prompt_template"] = template
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=48,
        temperature=0,
        extra_body=extra,
    )
    answer = response.choices[0].message.content.strip().replace("\n", " ")
    print(f"[{model}] {question}\n    → {answer[:160]}", file=sys.stderr)
    record(question, model, response, template)

# Structured output: the answer is held to a JSON schema, even from a 135M model.
question = "Describe a honeybee colony."
response = client.chat.completions.create(
    model=base_model,
    messages=[{"role": "user", "content": question}],
    max_tokens=80,
    temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "colony", "strict": True, "schema": {
        "type": "object",
        "properties": {"queens": {"type": "integer", "minimum": 0}, "workers": {"type": "integer", "minimum": 0},
                       "season": {"enum": ["spring", "summer", "autumn", "winter"]}},
        "required": ["queens", "workers", "season"], "additionalProperties": False}}},
)
print(f"[{base_model}, json_schema] {question}\n    → {response.choices[0].message.content}", file=sys.stderr)
record(question + " (JSON schema)", base_model, response)

# A tool call: the model answers with a call whose arguments follow the tool's schema.
question = "What is the weather in Oslo?"
response = client.chat.completions.create(
    model=base_model,
    messages=[{"role": "user", "content": question}],
    max_tokens=60,
    temperature=0,
    tools=[{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    tool_choice="required",
    parallel_tool_calls=False,
)
call = response.choices[0].message.tool_calls[0]
print(f"[{base_model}, tools] {question}\n    → {call.function.name}({call.function.arguments})", file=sys.stderr)
record(question + " (tool call)", base_model, response)

# Three answers to one prompt (prefilled once), each with its tokens' log-probabilities.
question = "Name a flower that bees love."
response = client.chat.completions.create(
    model=base_model,
    messages=[{"role": "user", "content": question}],
    max_tokens=24,
    temperature=0.9,
    seed=4,
    n=3,
    logprobs=True,
    top_logprobs=2,
)
for choice in response.choices:
    tokens = choice.logprobs.content
    mean = sum(t.logprob for t in tokens) / max(len(tokens), 1)
    text = choice.message.content.strip().replace("\n", " ")
    print(f"[{base_model}, n=3 #{choice.index}, mean logprob {mean:.2f}] {question}\n    → {text[:120]}", file=sys.stderr)
record(question + " (n=3, logprobs)", base_model, response)

# An MCP tool registered on chain (Bob's get_weather): the worker calls it for the model and the
# receipt pays Bob its price per successful call.
with open(os.path.join(demo_dir, "tool.json")) as f:
    tool = json.load(f)["tool"]
question = "What is the weather in Oslo?"
response = client.chat.completions.create(
    model=base_model,
    messages=[{"role": "user", "content": question}],
    max_tokens=120,
    temperature=0,
    tool_choice="required",
    extra_body={"mcp_tools": [tool], "max_tool_calls": 1},
)
for call in response.model_extra["mcp_calls"]:
    print(f"[{base_model}, MCP tool {call['tool']}] {call['name']}({call['arguments']}) → {call['result']}"
          f"{'' if call['billed'] else ' (failed, not billed)'}", file=sys.stderr)
print(f"    → {(response.choices[0].message.content or '').strip()[:160]}", file=sys.stderr)
record(question + " (MCP tool)", base_model, response)

# A request paid by a voucher: the payer signs the exact body bytes (max fee 1 OPEN).
question = "When do bees make honey?"
body = json.dumps({
    "model": "nature-tutor",
    "messages": [{"role": "user", "content": question}],
    "max_tokens": 32,
    "temperature": 0,
    "datanets": [0],
}).encode()
with tempfile.NamedTemporaryFile(suffix=".json") as f:
    f.write(body)
    f.flush()
    voucher = subprocess.run(
        [worker_bin, "voucher", "sign", "--chain", chain_ws, "--key-env", "OPENLEDGER_PAYER_KEY",
         "--worker", worker_account, "--body-file", f.name, "--max-fee", "1OPEN"],
        check=True, capture_output=True, text=True, env={**os.environ, "OPENLEDGER_PAYER_KEY": "//Alice"},
    ).stdout.strip()
request = urllib.request.Request(
    f"{url}/v1/chat/completions", data=body,
    headers={"Content-Type": "application/json", "x-openledger-voucher": voucher},
)
with urllib.request.urlopen(request) as reply:
    answer = json.load(reply)
print(f"[nature-tutor, voucher] {question}\n    → {answer['choices'][0]['message']['content'].strip()[:160]}", file=sys.stderr)
log.append({
    "question": question + " (voucher)",
    "model": "nature-tutor",
    "prompt_template": None,
    "usage": answer["usage"],
    "attribution": answer.get("attribution"),
    "receipt_id": answer["receipt_id"],
})

# Without authorisation the worker answers 402 before doing any work.
try:
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}))
    sys.exit("a request without authorisation was served")
except urllib.error.HTTPError as e:
    print(f"[no authorisation] → HTTP {e.code}: {json.load(e)['error']['message']}", file=sys.stderr)

with open(os.path.join(demo_dir, "requests.json"), "w") as f:
    json.dump(log, f, indent=1)
