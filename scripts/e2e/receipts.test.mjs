// Receipts end to end: a real dev node, the real worker on SmolLM2, the official `openai` client
// for requests and polkadot.js for chain state. scripts/ledger-e2e.sh prepares the chain and the
// worker's files (the demo's steps) and sets:
//   OPENLEDGER_WS, OPENLEDGER_DEMO_DIR, OPENLEDGER_WORKER_BIN, OPENLEDGER_WORKER_PORT,
//   OPENLEDGER_NODE_BIN, OPENLEDGER_RPC_PORT, OPENLEDGER_P2P_PORT
// The tests run in order and share the chain; each measures what it changes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, openSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { compactFromU8a } from '@polkadot/util';
import { connect, send, findEvent, freePorts, waitFor } from './lib.mjs';
import { OPEN, palletAccount, setAllowance, settledReceipts } from './ledger.mjs';

const dir = process.env.OPENLEDGER_DEMO_DIR;
const workerBin = process.env.OPENLEDGER_WORKER_BIN;
const workerUrl = `http://127.0.0.1:${process.env.OPENLEDGER_WORKER_PORT}`;
const ids = JSON.parse(readFileSync(join(dir, 'ids.json'), 'utf8'));
const PPM = 1_000_000n;

let node;
let worker = null;
let startBlock;
const delivered = []; // every response that reached the client: { receiptId, usage, attribution, model, template }

function workerArgs(extra = []) {
  return ['serve', '--listen', `127.0.0.1:${process.env.OPENLEDGER_WORKER_PORT}`, '--adapters', join(dir, 'adapters'),
    '--datanets', join(dir, 'datanets'), '--templates', join(dir, 'templates'), '--chain', process.env.OPENLEDGER_WS,
    '--base-model-id', String(ids.baseModel), '--outbox', join(dir, 'outbox.redb'), '--api-keys', join(dir, 'api-keys.json'),
    '--max-tokens', '256', ...extra];
}

// Starts `openledger-worker` with `args` and waits for its /health at `url`.
async function spawnWorker(args, url, logName = 'worker.log', env = process.env) {
  const log = openSync(join(dir, logName), 'a');
  const child = spawn(workerBin, args, { stdio: ['ignore', log, log], env });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  for (let i = 0; i < 240; i++) {
    try {
      if ((await fetch(`${url}/health`)).ok) return { child, exited };
    } catch { /* not up yet */ }
    const done = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 500))]);
    if (done) throw new Error(`the worker exited (${JSON.stringify(done)}); see ${dir}/${logName}`);
  }
  throw new Error(`the worker at ${url} did not come up`);
}

const startWorker = (extra) => spawnWorker(workerArgs(extra), workerUrl);

async function stopWorker(signal = 'SIGTERM') {
  if (!worker) return null;
  worker.child.kill(signal);
  const result = await worker.exited;
  worker = null;
  return result;
}

function cli(...args) {
  return execFileSync(workerBin, args, { encoding: 'utf8', env: { ...process.env } });
}

const client = () => new OpenAI({ baseURL: `${workerUrl}/v1`, apiKey: 'demo-payer-key', maxRetries: 0 });

// One chat request; records it when the answer arrives.
async function ask(model, question, { template, datanets, maxTokens = 24 } = {}) {
  const body = { model, messages: [{ role: 'user', content: question }], max_tokens: maxTokens, temperature: 0 };
  if (datanets) body.datanets = datanets;
  if (template) body.prompt_template = template;
  const response = await client().chat.completions.create(body);
  assert.match(response.receipt_id, /^0x[0-9a-f]{64}$/, 'every answer carries its receipt id');
  const record = { receiptId: response.receipt_id, usage: response.usage, attribution: response.attribution ?? [], model, template };
  delivered.push(record);
  return record;
}

// The same, streamed: the receipt id comes in the last chunk, written after the receipt is stored.
async function askStreaming(model, question, { maxTokens = 24 } = {}) {
  const stream = await client().chat.completions.create({
    model, messages: [{ role: 'user', content: question }], max_tokens: maxTokens, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let receiptId = null;
  let usage = null;
  for await (const chunk of stream) {
    receiptId = chunk.receipt_id ?? receiptId;
    usage = chunk.usage ?? usage;
  }
  assert.match(receiptId ?? '', /^0x[0-9a-f]{64}$/, 'a finished stream carries its receipt id');
  const record = { receiptId, usage, attribution: [], model };
  delivered.push(record);
  return record;
}

// Waits until every id has a ReceiptSettled event; returns all settled receipts since the start.
async function waitSettled(receiptIds, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const settled = await settledReceipts(node.api, startBlock);
    if (receiptIds.every((id) => settled.has(id))) return settled;
    if (Date.now() > deadline) {
      throw new Error(`not settled: ${receiptIds.filter((id) => !settled.has(id)).join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function free(address) {
  return (await node.api.query.system.account(address)).data.free.toBigInt();
}

async function credit(address) {
  return (await node.api.query.system.account(address)).data.reserved.toBigInt();
}

// The fee and payouts of one answer, computed here from chain prices and the answer's usage and
// attribution, following DESIGN.md's fee rules (not the runtime's code).
async function expectedPayouts(record) {
  const { api } = node;
  const workerAccount = (await api.query.workers.workers(accountOf(process.env.OPENLEDGER_ACCOUNT_KEY))).unwrap();
  const protocol = BigInt((await api.query.attribution.protocolShare()).toNumber());
  const dataShare = BigInt((await api.query.attribution.dataShare()).toNumber());
  const retrievalPrice = (await api.query.attribution.retrievalPrice()).toBigInt();
  const afterProtocol = (x) => x - (x * protocol) / PPM;
  const tokens = BigInt(record.usage.prompt_tokens + record.usage.completion_tokens);
  const pay = new Map();
  const add = (who, amount) => { if (amount > 0n) pay.set(who, (pay.get(who) ?? 0n) + amount); };

  const workerPart = (tokens * workerAccount.computePricePer1kTokens.toBigInt()) / 1000n;
  let fee = workerPart;
  add(workerAddress, afterProtocol(workerPart));

  const adapterId = ids.adapters[record.model];
  if (adapterId !== undefined) {
    const adapter = (await api.query.registry.adapters(adapterId)).unwrap();
    const adapterPart = (tokens * adapter.pricePer1kTokens.toBigInt()) / 1000n;
    fee += adapterPart;
    const net = afterProtocol(adapterPart);
    const data = (net * dataShare) / PPM;
    let allocated = 0n;
    for (const [datanet, share] of adapter.provenance) {
      allocated += share.toBigInt();
      const count = BigInt((await api.query.dataNets.dataNets(datanet)).unwrap().acceptedItems.toNumber());
      if (count === 0n) continue;
      const portion = (data * share.toBigInt()) / PPM;
      add(palletAccount('ol/dnets'), (portion / count) * count);
    }
    add(adapter.owner.toString(), net - data + (data * (PPM - allocated)) / PPM);
  }
  if (record.template) {
    const promptId = ids.prompts[record.template];
    const prompt = (await api.query.registry.prompts(promptId)).unwrap();
    fee += prompt.pricePerCall.toBigInt();
    add(prompt.owner.toString(), afterProtocol(prompt.pricePerCall.toBigInt()));
  }
  for (const entry of record.attribution.filter((e) => e.source === 'tool')) {
    const tool = (await api.query.registry.tools(entry.tool)).unwrap();
    const part = tool.pricePerCall.toBigInt() * BigInt(entry.calls);
    fee += part;
    add(tool.owner.toString(), afterProtocol(part));
  }
  const weights = new Map();
  for (const entry of record.attribution) {
    if (entry.source === 'training' || entry.source === 'tool') continue;
    weights.set(entry.item, (weights.get(entry.item) ?? 0n) + BigInt(entry.weight_ppm));
  }
  const retrievalPart = retrievalPrice * BigInt(weights.size);
  fee += retrievalPart;
  const totalWeight = [...weights.values()].reduce((a, b) => a + b, 0n);
  const itemOwner = new Map(Object.values(ids.items).map((v) => [v.item, v.contributor]));
  for (const [item, weight] of weights) {
    add(itemOwner.get(item), (afterProtocol(retrievalPart) * weight) / totalWeight);
  }
  const paid = [...pay.values()].reduce((a, b) => a + b, 0n);
  add(palletAccount('py/trsry'), fee - paid);
  return { fee, pay };
}

let keyring;
let workerAddress;
const accountOf = (uri) => keyring.addFromUri(uri).address;

before(async () => {
  node = await connect();
  keyring = node.keyring;
  workerAddress = accountOf(process.env.OPENLEDGER_ACCOUNT_KEY);
  startBlock = (await node.api.rpc.chain.getHeader()).number.toNumber();
  worker = await startWorker();
});

after(async () => {
  await stopWorker();
  await node?.api.disconnect();
});

test('the worker\'s chain client is generated from this runtime\'s metadata', async () => {
  // `Metadata_metadata_at_version(15)` returns SCALE Option<OpaqueMetadata>: 0x01, a compact
  // length, the metadata. The committed copy must be those bytes (scripts/refresh-metadata.sh).
  const raw = (await node.api.rpc.state.call('Metadata_metadata_at_version', '0x0f000000')).toU8a(true);
  assert.equal(raw[0], 1, 'the runtime serves metadata V15');
  const [offset, length] = compactFromU8a(raw.subarray(1));
  const served = raw.subarray(1 + offset, 1 + offset + length.toNumber());
  const committed = readFileSync(new URL('../../worker/ledger/metadata/openledger.scale', import.meta.url));
  assert.ok(Buffer.from(served).equals(committed),
    `worker/ledger/metadata/openledger.scale (${committed.length} bytes) differs from the runtime's (${served.length}); run scripts/refresh-metadata.sh`);
});

test('a payer without authorisation gets 402 before any work, and no receipt exists', async () => {
  const body = JSON.stringify({ model: 'nature-tutor', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });
  for (const headers of [{}, { authorization: 'Bearer not-a-key' }, { 'x-openledger-voucher': '0x00' }]) {
    const reply = await fetch(`${workerUrl}/v1/chat/completions`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
    assert.equal(reply.status, 402);
    const error = (await reply.json()).error;
    assert.equal(error.code, 'payment_required', error.message);
  }
  await stopWorker();
  const stats = JSON.parse(cli('outbox', 'stats', '--outbox', join(dir, 'outbox.redb')));
  assert.equal(stats.total, 0, 'refused requests leave no receipt');
  worker = await startWorker();
});

test('requests over adapters, prompts and DataNets settle and pay exactly what the rules say', async () => {
  const payees = [node.dev.charlie.address, node.dev.dave.address, node.dev.eve.address, node.dev.ferdie.address,
    palletAccount('py/trsry'), palletAccount('ol/dnets')];
  const before = new Map(await Promise.all(payees.map(async (p) => [p, await free(p)])));
  const creditBefore = await credit(node.dev.alice.address);
  const records = await Promise.all([
    ask('nature-tutor', 'How do honeybees find food?', { template: 'qa', datanets: [0] }),
    ask('kitchen-helper', 'How long does sourdough rise?', { template: 'qa', datanets: [0] }),
    ask('SmolLM2-135M-Instruct', 'What are spring tides?', { datanets: [0] }),
    ask('nature-tutor', 'Say hello.', {}),
    ask('kitchen-helper', 'Name a bread.', {}),
    ask('SmolLM2-135M-Instruct', 'How efficient are solar panels?', { template: 'qa', datanets: [0] }),
  ]);
  const settled = await waitSettled(records.map((r) => r.receiptId));
  const expected = new Map();
  let charged = 0n;
  for (const record of records) {
    const { fee, pay } = await expectedPayouts(record);
    const onChain = settled.get(record.receiptId);
    assert.equal(onChain.fee, fee, `fee of ${record.receiptId}`);
    assert.equal(onChain.payer, node.dev.alice.address);
    charged += fee;
    for (const [who, amount] of pay) expected.set(who, (expected.get(who) ?? 0n) + amount);
    assert.deepEqual(new Map([...onChain.payouts].sort()), new Map([...pay].sort()), `payouts of ${record.receiptId}`);
  }
  for (const p of payees) {
    assert.equal((await free(p)) - before.get(p), expected.get(p) ?? 0n, `balance of ${p}`);
  }
  assert.equal(creditBefore - (await credit(node.dev.alice.address)), charged, 'the payer is charged the fees, no more');
  const paid = [...expected.values()].reduce((a, b) => a + b, 0n);
  assert.equal(paid, charged, 'the total paid equals the total charged');
});

test('an MCP tool registered on chain is called for a request; its owner is paid price × calls', async () => {
  const { api } = node;
  // A real MCP server (the official Python SDK) on a loopback port, registered by Eve.
  const [port] = await freePorts(1);
  const server = spawn(join(process.env.OPENLEDGER_VENV, 'bin', 'python'),
    [new URL('../mcp/weather_server.py', import.meta.url).pathname, String(port)], { stdio: 'ignore' });
  try {
    const endpoint = `http://127.0.0.1:${port}/mcp`;
    let definition = null;
    for (let i = 0; i < 120 && !definition; i++) {
      try {
        definition = JSON.parse(cli('mcp', 'definition', '--endpoint', endpoint, '--tool', 'get_weather', '--allow-private'));
      } catch { await new Promise((r) => setTimeout(r, 500)); }
    }
    assert.ok(definition, 'the MCP server came up');
    const price = 7n * 10n ** 15n;
    const owner = node.dev.eve;
    const r = await send(api, api.tx.registry.registerTool(endpoint, 'get_weather', definition.definition_hash, price), owner);
    assert.equal(r.error, null, `registerTool: ${r.error}`);
    const tool = findEvent(r.events, 'registry', 'ToolRegistered').data.tool.toNumber();
    // The worker calls loopback endpoints only when told to.
    await stopWorker();
    worker = await startWorker(['--mcp-allow-private']);
    const ownerBefore = await free(owner.address);
    const creditBefore = await credit(node.dev.alice.address);
    const response = await client().chat.completions.create({
      model: 'SmolLM2-135M-Instruct', messages: [{ role: 'user', content: 'What is the weather in Oslo?' }],
      max_tokens: 60, temperature: 0, tool_choice: 'required', mcp_tools: [tool], max_tool_calls: 1,
    });
    const calls = response.mcp_calls;
    assert.equal(calls.length, 1, JSON.stringify(calls));
    assert.equal(calls[0].billed, true, JSON.stringify(calls[0]));
    assert.deepEqual(response.attribution.filter((e) => e.source === 'tool'), [{ source: 'tool', tool, calls: 1 }]);
    const record = { receiptId: response.receipt_id, usage: response.usage, attribution: response.attribution, model: 'SmolLM2-135M-Instruct' };
    delivered.push(record);
    const settled = await waitSettled([record.receiptId]);
    const { fee, pay } = await expectedPayouts(record);
    const onChain = settled.get(record.receiptId);
    assert.equal(onChain.fee, fee, 'the fee includes the tool\'s price per call');
    assert.deepEqual(new Map([...onChain.payouts].sort()), new Map([...pay].sort()));
    const protocol = BigInt((await api.query.attribution.protocolShare()).toNumber());
    assert.equal((await free(owner.address)) - ownerBefore, price - (price * protocol) / PPM, 'the owner gets price × calls less the protocol share');
    assert.equal(creditBefore - (await credit(node.dev.alice.address)), fee, 'the payer is charged the fee');
    assert.equal([...onChain.payouts.values()].reduce((a, b) => a + b, 0n), fee, 'the total paid equals the total charged');
  } finally {
    server.kill();
  }
});

test('a contribution accepted while the worker runs is served and paid without a restart', async () => {
  // The operator indexes a new document (with the DataNet's others), a contributor submits its
  // hash, a curator accepts it: the worker picks the id up from the chain's events.
  const docs = join(dir, 'docs-v2');
  execFileSync('sh', ['-c', `mkdir -p "${docs}" && cp "$0"/*.md "${docs}"/`, new URL('../demo/datanet', import.meta.url).pathname]);
  writeFileSync(join(docs, 'octopus.md'), '# Octopuses\n\nAn octopus has three hearts and blue blood. Two hearts pump blood through the gills and the third through the rest of the body.\n');
  cli('datanet', 'ingest', '--datanet', String(ids.datanet), '--dir', docs, '--index', join(dir, 'datanets'));
  const items = cli('datanet', 'items', '--index', join(dir, 'datanets'), '--datanet', String(ids.datanet))
    .trim().split('\n').map((l) => JSON.parse(l));
  const octopus = items.find((i) => i.source === 'octopus.md');
  assert.ok(octopus && octopus.item === null, 'the new item has no chain id yet');
  const question = 'How many hearts does an octopus have?';
  const before = await ask('SmolLM2-135M-Instruct', question, { datanets: [ids.datanet], maxTokens: 8 });
  const known = new Set(Object.values(ids.items).map((v) => v.item));
  assert.ok(before.attribution.every((e) => known.has(e.item)), 'an item the chain has not accepted is not served');

  const { api, dev } = node;
  await waitSettled([before.receiptId]);
  const contributed = await send(api, api.tx.dataNets.contribute(ids.datanet, octopus.hash, octopus.bytes), dev.charlie);
  const item = findEvent(contributed.events, 'dataNets', 'Contributed').data[1].toNumber();
  assert.equal((await send(api, api.tx.dataNets.accept(ids.datanet, item), dev.bob)).error, null);
  ids.items[octopus.hash] = { item, contributor: dev.charlie.address, source: 'octopus.md' };
  const charlie = await free(dev.charlie.address);
  const asked = [];
  for (let i = 0; i < 60; i++) {
    asked.push(await ask('SmolLM2-135M-Instruct', question, { datanets: [ids.datanet], maxTokens: 8 }));
    if (asked.at(-1).attribution.some((e) => e.item === item)) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.ok(asked.at(-1).attribution.some((e) => e.item === item && e.source === 'retrieval'), JSON.stringify(asked.at(-1).attribution));
  await waitSettled(asked.map((r) => r.receiptId));
  let owed = 0n;
  for (const record of asked) owed += (await expectedPayouts(record)).pay.get(dev.charlie.address) ?? 0n;
  assert.ok(owed > 0n);
  assert.equal((await free(dev.charlie.address)) - charlie, owed, 'the new item\'s contributor is paid');
});

test('a voucher pays for exactly its request, once', async () => {
  const body = JSON.stringify({ model: 'nature-tutor', messages: [{ role: 'user', content: 'Bees?' }], max_tokens: 8, user: 'voucher-1' });
  const file = join(dir, 'voucher-body.json');
  writeFileSync(file, body);
  const sign = (...extra) => execFileSync(workerBin, ['voucher', 'sign', '--chain', process.env.OPENLEDGER_WS, '--key-env', 'PAYER',
    '--worker', workerAddress, '--body-file', file, '--max-fee', '1OPEN', ...extra], { encoding: 'utf8', env: { ...process.env, PAYER: '//Alice' } }).trim();
  const voucher = sign();
  const send = (text, signed = voucher) => fetch(`${workerUrl}/v1/chat/completions`, { method: 'POST', body: text, headers: { 'content-type': 'application/json', 'x-openledger-voucher': signed } });
  // A voucher living longer than a receipt may (a day of blocks) could pay twice once the
  // receipt's record is pruned; the chain refuses it, so the worker does before any work.
  const lasting = await send(body, sign('--expires-in', String(2 * 14_400)));
  assert.equal(lasting.status, 402);
  assert.match((await lasting.json()).error.message, /latest receipt expiry/);
  const tampered = await send(body.replace('Bees?', 'Wasps?'));
  assert.equal(tampered.status, 402, 'a voucher covers only the body it signed');
  const reply = await send(body);
  assert.equal(reply.status, 200);
  const answer = await reply.json();
  delivered.push({ receiptId: answer.receipt_id, usage: answer.usage, attribution: answer.attribution ?? [], model: 'nature-tutor' });
  const again = await send(body);
  assert.equal(again.status, 409, 'a voucher pays for one request');
  const settled = await waitSettled([answer.receipt_id]);
  assert.equal(settled.get(answer.receipt_id).fee, (await expectedPayouts(delivered.at(-1))).fee);
  // A worker that lost its outbox still refuses the replay: it asks the chain, whose replay
  // records hold the settled request, instead of signing a second receipt (equivocation).
  await stopWorker();
  const lost = workerArgs().map((a) => (a === join(dir, 'outbox.redb') ? join(dir, 'lost-outbox.redb') : a));
  worker = await spawnWorker(lost, workerUrl);
  try {
    const replay = await send(body);
    assert.equal(replay.status, 409, 'the chain remembers the settled voucher');
    assert.equal((await replay.json()).error.code, 'request_already_served');
  } finally {
    await stopWorker();
    worker = await startWorker();
  }
});

test('one voucher body sent four times at once is served once; the copies get 409 before any text', async () => {
  const body = JSON.stringify({ model: 'kitchen-helper', messages: [{ role: 'user', content: 'Name three breads.' }],
    max_tokens: 32, temperature: 0, stream: true, user: 'voucher-race' });
  const file = join(dir, 'voucher-race.json');
  writeFileSync(file, body);
  const voucher = execFileSync(workerBin, ['voucher', 'sign', '--chain', process.env.OPENLEDGER_WS, '--key-env', 'PAYER',
    '--worker', workerAddress, '--body-file', file, '--max-fee', '1OPEN'], { encoding: 'utf8', env: { ...process.env, PAYER: '//Alice' } }).trim();
  const replies = await Promise.all(Array.from({ length: 4 }, () => fetch(`${workerUrl}/v1/chat/completions`,
    { method: 'POST', body, headers: { 'content-type': 'application/json', 'x-openledger-voucher': voucher } })));
  const served = replies.filter((r) => r.status === 200);
  const refused = replies.filter((r) => r.status === 409);
  assert.equal(served.length, 1, `statuses ${replies.map((r) => r.status)}`);
  assert.equal(refused.length, 3, `statuses ${replies.map((r) => r.status)}`);
  for (const reply of refused) assert.equal((await reply.json()).error.code, 'request_already_served');
  const events = (await served[0].text()).split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)));
  const receiptId = events.map((e) => e.receipt_id).find(Boolean);
  assert.match(receiptId ?? '', /^0x[0-9a-f]{64}$/, 'the one stream served ends with its receipt');
  await waitSettled([receiptId]);
});

test('a stream its client cuts is charged for the tokens it was sent', async () => {
  const from = (await node.api.rpc.chain.getHeader()).number.toNumber();
  const controller = new AbortController();
  const reply = await fetch(`${workerUrl}/v1/chat/completions`, {
    method: 'POST', signal: controller.signal,
    headers: { 'content-type': 'application/json', authorization: 'Bearer demo-payer-key' },
    body: JSON.stringify({ model: 'kitchen-helper', messages: [{ role: 'user', content: 'Write a long story about bread.' }],
      max_tokens: 240, temperature: 0, stream: true }),
  });
  assert.equal(reply.status, 200);
  const requestHash = reply.headers.get('x-openledger-request-hash');
  assert.match(requestHash ?? '', /^0x[0-9a-f]{64}$/);
  // Read six chunks of text, as a client would that has seen enough, then leave.
  const reader = reply.body.getReader();
  let chunks = 0;
  while (chunks < 7) { // the role chunk, then six of text
    const { done, value } = await reader.read();
    assert.ok(!done, 'the answer is longer than six chunks');
    chunks += (new TextDecoder().decode(value).match(/^data: \{/gm) ?? []).length;
  }
  controller.abort();
  const known = new Set(delivered.map((r) => r.receiptId));
  const cut = await waitFor('the cut stream\'s receipt to settle', async () => {
    const settled = await settledReceipts(node.api, from);
    return [...settled.keys()].find((id) => !known.has(id));
  }, { timeoutMs: 90_000, intervalMs: 1000 });
  await stopWorker();
  const receipts = cli('outbox', 'export', '--outbox', join(dir, 'outbox.redb')).trim().split('\n').map((l) => JSON.parse(l));
  const receipt = receipts.find((r) => r.request_hash === requestHash);
  worker = await startWorker();
  assert.ok(receipt, 'the cut stream has a receipt');
  assert.equal(receipt.id, cut, 'and it is the one that settled');
  assert.ok(receipt.completion_tokens >= 6 && receipt.completion_tokens < 240,
    `${receipt.completion_tokens} tokens charged: those sent, not the whole answer`);
});

test('receipts submitted by a third account pay the right people; resubmitting pays nothing twice', async () => {
  await stopWorker();
  worker = await startWorker(['--no-submit']);
  const records = [await ask('nature-tutor', 'Tell me about tides.', { template: 'qa', datanets: [0] }),
    await ask('kitchen-helper', 'Oven temperature?', { datanets: [0] })];
  await stopWorker();
  const payees = [node.dev.charlie.address, node.dev.dave.address, node.dev.eve.address, node.dev.ferdie.address, palletAccount('py/trsry'), palletAccount('ol/dnets')];
  const snapshot = async () => new Map(await Promise.all(payees.map(async (p) => [p, await free(p)])));
  const before = await snapshot();
  // Bob, who is owed nothing here, settles every receipt in the worker's outbox.
  const resubmit = () => JSON.parse(execFileSync(workerBin, ['outbox', 'resubmit', '--chain', process.env.OPENLEDGER_WS,
    '--outbox', join(dir, 'outbox.redb'), '--key-env', 'SUBMITTER'], { encoding: 'utf8', env: { ...process.env, SUBMITTER: '//Bob' } }));
  const first = resubmit();
  assert.equal(first.settled, 2, JSON.stringify(first));
  // Every other receipt was settled before; those past their expiry are refused as expired first.
  const { AlreadySettled: already = 0, Expired: expired = 0, ...other } = first.rejected;
  assert.equal(already + expired, first.submitted - 2, JSON.stringify(first));
  assert.deepEqual(other, {}, JSON.stringify(first));
  const settled = await waitSettled(records.map((r) => r.receiptId));
  const expected = new Map();
  for (const record of records) {
    for (const [who, amount] of (await expectedPayouts(record)).pay) expected.set(who, (expected.get(who) ?? 0n) + amount);
    assert.ok(settled.has(record.receiptId));
  }
  const middle = await snapshot();
  for (const p of payees) assert.equal(middle.get(p) - before.get(p), expected.get(p) ?? 0n, `balance of ${p}`);
  const second = resubmit();
  assert.equal(second.settled, 0, JSON.stringify(second));
  assert.deepEqual(await snapshot(), middle, 'nothing is paid twice');
  // The worker's own submitter, restarted, finds them settled and records them as done.
  const logFile = join(dir, 'worker.log');
  const from = statSync(logFile).size;
  worker = await startWorker();
  await waitFor('the restarted worker\'s submitter to record its batch', () =>
    readFileSync(logFile).subarray(from).toString().includes('receipt batch included'), { timeoutMs: 60_000, intervalMs: 250 });
  assert.deepEqual(await snapshot(), middle, 'nothing is paid twice');
});

test('kill -9 with requests in flight: every delivered answer has exactly one settled receipt', async () => {
  const count = delivered.length;
  const inFlight = [];
  for (let i = 0; i < 6; i++) {
    // Two short answers, then four far longer ones the kill is sure to cut; one of each streamed.
    const maxTokens = i < 2 ? 48 + 16 * i : 240;
    const asking = i === 1 || i === 4 ? askStreaming : ask;
    inFlight.push(asking(i % 2 ? 'nature-tutor' : 'kitchen-helper', `Write a long story number ${i} about bees.`, { maxTokens }).catch(() => null));
  }
  // Kill once some answers are out and others still generating.
  while (delivered.length < count + 2) await new Promise((r) => setTimeout(r, 50));
  await stopWorker('SIGKILL');
  await Promise.all(inFlight);
  const fresh = delivered.slice(count);
  assert.ok(fresh.length >= 2 && fresh.length < 6, `${fresh.length} answers were delivered before the kill`);
  worker = await startWorker();
  const settled = await waitSettled(delivered.map((r) => r.receiptId));
  // Settled at most once each: the chain's own replay protection, seen through its events.
  const seen = new Map();
  const best = (await node.api.rpc.chain.getHeader()).number.toNumber();
  for (let n = startBlock; n <= best; n++) {
    const events = await (await node.api.at(await node.api.rpc.chain.getBlockHash(n))).query.system.events();
    for (const { event } of events) {
      if (event.section === 'attribution' && event.method === 'ReceiptSettled') {
        const id = event.data.receiptId.toHex();
        seen.set(id, (seen.get(id) ?? 0) + 1);
      }
    }
  }
  for (const record of delivered) {
    assert.equal(seen.get(record.receiptId), 1, `receipt ${record.receiptId} settled once`);
    assert.ok(settled.has(record.receiptId));
  }
  assert.ok([...seen.values()].every((n) => n === 1), 'no receipt settled twice');
});

test('the node restarted during submission: nothing is lost', async () => {
  const records = await Promise.all([ask('nature-tutor', 'What do drones do?', {}), ask('kitchen-helper', 'Starter feeding?', {})]);
  // The answers woke the submitter: stop the node under it, keep it down a while, bring it back.
  const nodeArgs = ['--dev', '--base-path', join(dir, 'chain'), '--state-pruning', 'archive', '--rpc-port', process.env.OPENLEDGER_RPC_PORT,
    '--port', process.env.OPENLEDGER_P2P_PORT, '--rpc-cors', 'all', '--no-prometheus', '--no-telemetry'];
  await node.api.disconnect();
  execFileSync('sh', ['-c', `kill $(cat "${dir}/node.pid") && while kill -0 $(cat "${dir}/node.pid") 2>/dev/null; do sleep 0.2; done`]);
  await new Promise((r) => setTimeout(r, 3000));
  const log = openSync(join(dir, 'node.log'), 'a');
  const restarted = spawn(process.env.OPENLEDGER_NODE_BIN, nodeArgs, { stdio: ['ignore', log, log], detached: true });
  execFileSync('sh', ['-c', `echo ${restarted.pid} > "${dir}/node.pid"`]);
  restarted.unref();
  node = await connect();
  await waitSettled(records.map((r) => r.receiptId));
});

test('concurrent requests never commit more than the allowance: the excess gets 402, no receipt is refused', async () => {
  // Room for a few requests: each holds its most possible fee from pricing until settlement.
  await setAllowance(node, node.dev.alice, workerAddress, OPEN / 10n);
  const outcomes = await Promise.all(Array.from({ length: 8 }, (_, i) => ask(i % 2 ? 'nature-tutor' : 'kitchen-helper',
    `Question ${i} about bread and bees?`, { datanets: [0], maxTokens: 24 }).then((r) => r, (e) => e)));
  const served = outcomes.filter((o) => o.receiptId);
  const refused = outcomes.filter((o) => !o.receiptId);
  assert.ok(served.length >= 1 && refused.length >= 1, `${served.length} served, ${refused.length} refused`);
  for (const e of refused) assert.equal(e.status, 402, String(e));
  await waitSettled(served.map((r) => r.receiptId));
  await setAllowance(node, node.dev.alice, workerAddress, 50n * OPEN);
});

async function peersOf(url, query = '') {
  const reply = await fetch(`${url}/v1/peers${query}`);
  assert.equal(reply.status, 200, await reply.clone().text());
  return reply.json();
}

test('on the p2p network, a peer vouched for by a registered worker\'s session key is listed as registered', async () => {
  const p2p = ['--p2p-listen', '/ip4/127.0.0.1/tcp/0', '--p2p-interval-secs', '2'];
  await stopWorker();
  worker = await startWorker(p2p);
  const first = await waitFor('the worker\'s p2p address', async () => {
    const listing = await peersOf(workerUrl);
    return listing.listening.length > 0 && listing;
  });
  const joining = [...p2p, '--p2p-peer', first.listening[0]];
  // A second registered worker (its own account and session key, registered with the worker's
  // CLI), and a worker serving no chain.
  const [secondPort, plainPort] = await freePorts(2);
  const secondUrl = `http://127.0.0.1:${secondPort}`;
  const plainUrl = `http://127.0.0.1:${plainPort}`;
  const secondEnv = { ...process.env, OPENLEDGER_ACCOUNT_KEY: '//SecondWorker', OPENLEDGER_SESSION_KEY: '//SecondWorker//session' };
  const secondAddress = accountOf('//SecondWorker');
  await send(node.api, node.api.tx.balances.transferKeepAlive(secondAddress, 2000n * OPEN), node.dev.alice);
  execFileSync(workerBin, ['chain', 'register', '--chain', process.env.OPENLEDGER_WS, '--endpoint', secondUrl,
    '--serves', String(ids.baseModel), '--price-per-1k', '0.01OPEN', '--stake', '1000OPEN'], { env: secondEnv, encoding: 'utf8' });
  const others = [];
  try {
    others.push(await spawnWorker(['serve', '--listen', `127.0.0.1:${secondPort}`, '--adapters', join(dir, 'adapters'),
      '--chain', process.env.OPENLEDGER_WS, '--base-model-id', String(ids.baseModel), '--outbox', join(dir, 'second.redb'),
      ...joining], secondUrl, 'second.log', secondEnv));
    others.push(await spawnWorker(['serve', '--listen', `127.0.0.1:${plainPort}`, '--adapters', join(dir, 'adapters'), ...joining],
      plainUrl, 'plain.log'));
    const heard = await waitFor('the first to hear both', async () => {
      const data = (await peersOf(workerUrl)).data;
      return data.length === 2 && data;
    });
    const byEndpoint = Object.fromEntries(heard.map((p) => [p.endpoint, p]));
    assert.equal(byEndpoint[secondUrl].registered, true, JSON.stringify(heard));
    assert.equal(byEndpoint[secondUrl].worker.account, secondAddress);
    assert.equal(byEndpoint[plainUrl].registered, false, JSON.stringify(heard));
    assert.equal(byEndpoint[plainUrl].worker, undefined);
    const registered = (await peersOf(workerUrl, '?registered=true')).data;
    assert.deepEqual(registered.map((p) => p.endpoint), [secondUrl]);
    // The worker serving no chain shows the claim but cannot tell whether it is registered.
    const seen = await waitFor('the plain worker to hear the first', async () =>
      (await peersOf(plainUrl)).data.find((p) => p.peer_id === first.peer_id));
    assert.equal(seen.worker.account, workerAddress);
    assert.equal(seen.registered, null);
  } finally {
    for (const other of others) {
      other.child.kill('SIGTERM');
      await other.exited;
    }
  }
});

// A registry event makes the worker read again the entry it names (not the whole registry): a
// template its owner retires is refused within a few blocks, and what it served still settles.
test('a prompt template retired while the worker runs is refused without a restart', async () => {
  const { api, dev } = node;
  if (!worker) worker = await startWorker();
  const served = await ask('SmolLM2-135M-Instruct', 'What does a DataNet hold?', { template: 'qa', maxTokens: 4 });
  const r = await send(api, api.tx.registry.retirePrompt(ids.prompts.qa), dev.ferdie);
  assert.equal(r.error, null, `retirePrompt: ${r.error}`);
  findEvent(r.events, 'registry', 'PromptRetiring');
  let refused = null;
  for (let i = 0; i < 60 && !refused; i++) {
    try {
      await ask('SmolLM2-135M-Instruct', 'What does a DataNet hold?', { template: 'qa', maxTokens: 4 });
      await new Promise((resolve) => setTimeout(resolve, 500));
    } catch (e) {
      refused = e;
    }
  }
  assert.equal(refused?.status, 404, String(refused));
  assert.equal(refused.error?.code, 'not_registered_on_chain', refused.message);
  await waitSettled(delivered.filter((d) => d.template === 'qa').map((d) => d.receiptId).concat(served.receiptId));
});

test('the outbox holds every delivered answer\'s receipt, each judged', async () => {
  await stopWorker();
  const stats = JSON.parse(cli('outbox', 'stats', '--outbox', join(dir, 'outbox.redb')));
  const exported = cli('outbox', 'export', '--outbox', join(dir, 'outbox.redb')).trim().split('\n').map((l) => JSON.parse(l));
  const ids = new Set(exported.map((r) => r.id));
  for (const record of delivered) assert.ok(ids.has(record.receiptId), `receipt ${record.receiptId} is in the outbox`);
  // One receipt per request, across every restart and kill: a second would be equivocation.
  const requests = new Set(exported.map((r) => r.request_hash));
  assert.equal(requests.size, exported.length, 'no request has two receipts');
  assert.equal(stats.queued, 0, 'every receipt was judged');
  assert.equal(stats.rejected, 0, JSON.stringify(stats));
});
