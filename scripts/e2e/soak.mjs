// The soak's clients and its accounting (scripts/soak.sh runs both around a dev node and two
// workers that it kills and restarts):
//   node soak.mjs address URI          prints the SS58 account of a dev key URI
//   node soak.mjs second               funds the second worker's account and sets Alice's
//                                      allowance for it
//   node soak.mjs load SECONDS OUT     sends a mix of requests to both workers for SECONDS and
//                                      writes one JSON line per request to OUT
//   node soak.mjs report OUT EXPORTS…  settles nothing: reads the chain's events since the load
//                                      began and the workers' outbox exports, prints the figures
//                                      and exits 1 if an invariant fails
// Environment: OPENLEDGER_WS, OPENLEDGER_DEMO_DIR, OPENLEDGER_WORKER_BIN, SOAK_WORKERS (a JSON
// list of {url, address}).
import { execFile } from 'node:child_process';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { connect, send } from './lib.mjs';
import { OPEN, formatOpen } from './ledger.mjs';

const run = promisify(execFile);
const env = process.env;
const dir = env.OPENLEDGER_DEMO_DIR;
const workerBin = env.OPENLEDGER_WORKER_BIN;
const workers = JSON.parse(env.SOAK_WORKERS ?? '[]');
const [command, ...args] = process.argv.slice(2);
const ALLOWANCE = 50n * OPEN;
const MODELS = ['SmolLM2-135M-Instruct', 'nature-tutor', 'kitchen-helper'];
const QUESTIONS = ['What do bees eat?', 'How do I feed a starter?', 'Why do tides rise?', 'Name three breads.',
  'What is a drone bee?', 'How hot should an oven be for bread?'];

const pick = (list) => list[Math.floor(Math.random() * list.length)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Retries `f` while the node is down (it is restarted during the soak).
async function retrying(what, f, attempts = 30) {
  for (let n = 1; ; n++) {
    try {
      return await f();
    } catch (e) {
      if (n >= attempts) throw new Error(`${what}: ${e.message ?? e}`);
      await sleep(1000);
    }
  }
}

// One request. `cutAfter`: a stream the client leaves after that many content chunks.
async function request(worker, body, headers, { cutAfter = null } = {}) {
  const started = performance.now();
  const controller = new AbortController();
  const record = { worker: worker.url, stream: !!body.stream, status: 0, delivered: false, cut: false, broken: false };
  let reply;
  try {
    reply = await fetch(`${worker.url}/v1/chat/completions`, {
      method: 'POST', signal: controller.signal, body: typeof body === 'string' ? body : JSON.stringify(body),
      headers: { 'content-type': 'application/json', ...headers },
    });
  } catch {
    record.status = 'unreachable';
    return record;
  }
  record.status = reply.status;
  record.requestHash = reply.headers.get('x-openledger-request-hash');
  try {
    if (reply.status !== 200) {
      record.error = (await reply.json()).error?.code ?? null;
    } else if (!body.stream) {
      const answer = await reply.json();
      record.receiptId = answer.receipt_id;
      record.delivered = true;
    } else {
      const reader = reply.body.getReader();
      const decoder = new TextDecoder();
      let chunks = 0;
      let text = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (chunks === 0) record.ttftMs ??= performance.now() - started;
        const piece = decoder.decode(value, { stream: true });
        text += piece;
        // Chunks that carry text: the first one, the role's, carries none, and a stream cut
        // before any text is charged nothing (nothing of the answer was delivered).
        chunks += (piece.match(/"content":"(?!")/g) ?? []).length;
        if (cutAfter !== null && chunks >= cutAfter) {
          controller.abort();
          record.cut = true;
          record.delivered = true;
          break;
        }
      }
      if (!record.cut) {
        const ids = [...text.matchAll(/"receipt_id":"(0x[0-9a-f]{64})"/g)].map((m) => m[1]);
        record.receiptId = ids.at(-1);
        // A stream that ended without its receipt was broken off by the worker (killed).
        record.delivered = !!record.receiptId;
        record.broken = !record.receiptId;
      }
    }
  } catch {
    // The connection died mid-answer: the worker was killed.
    record.broken = true;
  }
  record.latencyMs = performance.now() - started;
  return record;
}

async function signVoucher(worker, body, maxFee) {
  const file = join(dir, `voucher-${process.pid}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, body);
  const { stdout } = await retrying('voucher sign', () => run(workerBin, ['voucher', 'sign', '--chain', env.OPENLEDGER_WS,
    '--key-env', 'PAYER', '--worker', worker.address, '--body-file', file, '--max-fee', maxFee],
  { env: { ...env, PAYER: '//Alice' } }));
  return stdout.trim();
}

const chatBody = (extra = {}) => ({
  model: pick(MODELS), messages: [{ role: 'user', content: pick(QUESTIONS) }], max_tokens: 8 + Math.floor(Math.random() * 40),
  temperature: Math.random() < 0.5 ? 0 : 0.8, ...extra,
});

// The client mix: one step sends one request, or one voucher body several times at once.
async function step(log, n) {
  const worker = pick(workers);
  const bearer = { authorization: 'Bearer demo-payer-key' };
  const roll = Math.random();
  if (roll < 0.35) {
    log({ kind: 'allowance', ...await request(worker, chatBody(), bearer) });
  } else if (roll < 0.55) {
    const cutAfter = Math.random() < 0.6 ? 1 + Math.floor(Math.random() * 6) : null;
    const body = chatBody({ stream: true, max_tokens: 24 + Math.floor(Math.random() * 40) });
    log({ kind: cutAfter === null ? 'stream' : 'cut stream', ...await request(worker, body, bearer, { cutAfter }) });
  } else if (roll < 0.8) {
    const copies = Math.random() < 0.3 ? 3 : 1;
    const body = JSON.stringify(chatBody({ user: `soak-${process.pid}-${n}` }));
    const voucher = await signVoucher(worker, body, '1OPEN');
    const replies = await Promise.all(Array.from({ length: copies },
      () => request(worker, body, { 'x-openledger-voucher': voucher })));
    for (const reply of replies) log({ kind: copies > 1 ? 'voucher copy' : 'voucher', copies, maxFee: (OPEN).toString(), ...reply });
  } else {
    const bad = pick([
      ['not json', '{"model": '],
      ['unknown model', { model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }],
      ['no messages', { model: MODELS[0], messages: [] }],
      ['bad max_tokens', { model: MODELS[0], messages: [{ role: 'user', content: 'hi' }], max_tokens: -3 }],
    ]);
    log({ kind: 'bad body', case: bad[0], ...await request(worker, bad[1], bearer) });
  }
}

// Sends the mix from four clients for `seconds`, while Alice lowers and raises her allowances.
async function load(seconds, out) {
  writeFileSync(out, '');
  const node = await connect();
  const { api, dev } = node;
  const start = await retrying('best block', async () => (await api.rpc.chain.getHeader()).number.toNumber());
  const issuance = await retrying('issuance', async () => (await api.query.balances.totalIssuance()).toBigInt());
  writeFileSync(join(dir, 'soak-start.json'), JSON.stringify({ block: start, issuance: issuance.toString() }));
  const log = (record) => appendFileSync(out, `${JSON.stringify({ at: Date.now(), ...record })}\n`);
  const end = Date.now() + seconds * 1000;
  let n = 0;
  const client = async () => {
    while (Date.now() < end) await step(log, n++);
  };
  // Allowance changes mid-flight: a cut binds receipts only a receipt's lifetime later, so no
  // answer served before it goes unpaid; the raise back applies at once.
  const allowances = async () => {
    while (Date.now() < end - 10_000) {
      await sleep(15_000 + Math.random() * 10_000);
      const worker = pick(workers);
      for (const amount of [OPEN / 100n, ALLOWANCE]) {
        try {
          const r = await send(api, api.tx.attribution.setAllowance(worker.address, amount), dev.alice, 20_000);
          log({ kind: 'allowance change', worker: worker.url, amount: amount.toString(), error: r.error });
        } catch (e) {
          log({ kind: 'allowance change', worker: worker.url, amount: amount.toString(), error: String(e.message ?? e) });
        }
        await sleep(4000);
      }
    }
  };
  const progress = setInterval(() => process.stderr.write(`\rsoak: ${n} steps, ${Math.max(0, Math.round((end - Date.now()) / 1000))} s left `), 5000);
  try {
    await Promise.all([client(), client(), client(), client(), allowances()]);
  } finally {
    clearInterval(progress);
    process.stderr.write('\n');
    await node.api.disconnect();
  }
}

function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// The figures, from the clients' records, the outboxes and the chain's own events.
async function report(out, exports) {
  const records = readFileSync(out, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const start = JSON.parse(readFileSync(join(dir, 'soak-start.json'), 'utf8'));
  const receipts = exports.flatMap((file) => readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)));
  const byRequest = new Map();
  for (const r of receipts) byRequest.set(r.request_hash, [...(byRequest.get(r.request_hash) ?? []), r]);

  const node = await connect();
  const { api } = node;
  const settled = new Map(); // receipt id → times settled
  const fees = new Map(); // receipt id → fee
  let burned = 0n;
  const best = (await api.rpc.chain.getHeader()).number.toNumber();
  for (let b = start.block + 1; b <= best; b++) {
    const events = await (await api.at(await api.rpc.chain.getBlockHash(b))).query.system.events();
    for (const { event } of events) {
      if (event.section === 'attribution' && event.method === 'ReceiptSettled') {
        const id = event.data.receiptId.toHex();
        settled.set(id, (settled.get(id) ?? 0) + 1);
        fees.set(id, event.data.fee.toBigInt());
      } else if (event.section === 'transactionPayment' && event.method === 'TransactionFeePaid') {
        burned += event.data.actualFee.toBigInt(); // the tip included
      } else if (event.section === 'balances' && event.method === 'DustLost') {
        burned += event.data.amount.toBigInt();
      }
    }
  }
  const issuance = (await api.query.balances.totalIssuance()).toBigInt();
  await api.disconnect();

  const served = records.filter((r) => r.status === 200);
  const delivered = served.filter((r) => r.delivered);
  const unpaid = delivered.filter((r) => !(byRequest.get(r.requestHash) ?? []).some((x) => settled.has(x.id)));
  const twice = [...settled.values()].filter((times) => times > 1).length
    + [...byRequest.values()].filter((list) => list.filter((x) => settled.has(x.id)).length > 1).length;
  const overcharged = delivered.filter((r) => r.maxFee && (byRequest.get(r.requestHash) ?? [])
    .some((x) => fees.has(x.id) && fees.get(x.id) > BigInt(r.maxFee))).length;
  const copies = records.filter((r) => r.kind === 'voucher copy');
  const copyGroups = new Map();
  for (const r of copies) if (r.requestHash) copyGroups.set(r.requestHash, [...(copyGroups.get(r.requestHash) ?? []), r.status]);
  const doublyServed = [...copyGroups.values()].filter((statuses) => statuses.filter((s) => s === 200).length > 1).length;
  const bad = records.filter((r) => r.kind === 'bad body' && r.status !== 'unreachable');
  const badAnswered5xx = bad.filter((r) => !(r.status >= 400 && r.status < 500)).length;
  const latencies = served.filter((r) => !r.stream && r.delivered).map((r) => r.latencyMs);
  const ttft = served.filter((r) => r.stream && r.ttftMs).map((r) => r.ttftMs);
  const issuanceDelta = issuance - BigInt(start.issuance);
  const count = (kind) => records.filter((r) => r.kind === kind).length;

  const rows = [
    ['requests sent', records.filter((r) => r.kind !== 'allowance change').length],
    ['  allowance / stream / cut stream / voucher / voucher copies / bad body',
      ['allowance', 'stream', 'cut stream', 'voucher', 'voucher copy', 'bad body'].map(count).join(' / ')],
    ['  refused: unreachable (worker or node down) / 402 / 409 / 503',
      ['unreachable', 402, 409, 503].map((s) => records.filter((r) => r.status === s).length).join(' / ')],
    ['requests served (200)', served.length],
    ['answers delivered (whole, or cut by the client)', delivered.length],
    ['streams broken off by a killed worker (partial, no receipt by design)', served.filter((r) => r.broken).length],
    ['receipts settled', settled.size],
    ['answers delivered but unpaid (must be 0)', unpaid.length],
    ['receipts paid twice (must be 0)', twice],
    ['voucher bodies served twice (must be 0)', doublyServed],
    ['payers charged beyond authorisation (must be 0)', overcharged],
    ['bad bodies not answered 4xx (must be 0)', badAnswered5xx],
    ['Δ total issuance', `-${formatOpen(-issuanceDelta, 9)} OPEN`],
    ['transaction fees burned', `${formatOpen(burned, 9)} OPEN (${issuanceDelta === -burned ? 'equal' : 'DIFFERENT'})`],
    ['latency p50 / p99, whole answers (ms)', `${percentile(latencies, 50).toFixed(0)} / ${percentile(latencies, 99).toFixed(0)}`],
    ['time to first chunk p50 / p99, streams (ms)', `${percentile(ttft, 50).toFixed(0)} / ${percentile(ttft, 99).toFixed(0)}`],
  ];
  console.log('| figure | value |\n|---|---:|');
  for (const [name, value] of rows) console.log(`| ${name} | ${value} |`);
  for (const r of unpaid.slice(0, 5)) console.error(`unpaid: ${JSON.stringify(r)}`);
  const failed = unpaid.length + twice + doublyServed + overcharged + badAnswered5xx > 0 || issuanceDelta !== -burned
    || delivered.length === 0;
  return failed ? 1 : 0;
}

// Last, so that every function and constant above is defined when a command runs.
if (command === 'address') {
  await cryptoWaitReady();
  console.log(new Keyring({ type: 'sr25519', ss58Format: 42 }).addFromUri(args[0]).address);
} else if (command === 'second') {
  const node = await connect();
  try {
    const [address] = workers.slice(1).map((w) => w.address);
    const { api, dev } = node;
    for (const [tx, who] of [[api.tx.balances.transferKeepAlive(address, 2000n * OPEN), dev.alice],
      [api.tx.attribution.setAllowance(address, ALLOWANCE), dev.alice]]) {
      const r = await send(api, tx, who);
      if (r.error) throw new Error(r.error);
    }
  } finally {
    await node.api.disconnect();
  }
} else if (command === 'load') {
  await load(Number(args[0]), args[1]);
} else if (command === 'report') {
  process.exitCode = await report(args[0], args.slice(1));
} else {
  console.error('usage: node soak.mjs address URI | second | load SECONDS OUT | report OUT EXPORT…');
  process.exit(2);
}
