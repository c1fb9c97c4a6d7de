// The ledger side of the demo and of the receipt tests: registers a base model, a DataNet with
// accepted items, adapters, prompts and funds a payer, through polkadot.js as a user would; and
// reads settled receipts and their payouts back from the chain.
import { send, findEvent, registrationCommitment } from './lib.mjs';

import { encodeAddress, randomAsU8a } from '@polkadot/util-crypto';
import { stringToU8a, u8aConcat } from '@polkadot/util';

export { blake2AsHex } from '@polkadot/util-crypto';

// The account of a FRAME `PalletId` (the treasury `py/trsry`, the DataNets reward pool `ol/dnets`).
export function palletAccount(id) {
  return encodeAddress(u8aConcat(stringToU8a('modl'), stringToU8a(id), new Uint8Array(32 - 4 - id.length)), 42);
}

export const OPEN = 10n ** 18n;

// Sends `txs` (pairs of [tx, signer]) with at most one transaction per signer in flight, the
// signers in parallel; returns the results in the order given. Throws on a dispatch error.
async function sendAll(api, txs) {
  const bySigner = new Map();
  txs.forEach(([tx, signer], index) => {
    const queue = bySigner.get(signer.address) ?? [];
    queue.push({ tx, signer, index });
    bySigner.set(signer.address, queue);
  });
  const results = new Array(txs.length);
  await Promise.all([...bySigner.values()].map(async (queue) => {
    for (const { tx, signer, index } of queue) {
      const result = await send(api, tx, signer);
      if (result.error) throw new Error(`${tx.method.section}.${tx.method.method}: ${result.error}`);
      results[index] = result;
    }
  }));
  return results;
}

// plan: {
//   model: { name, hash },
//   datanet: { name, owner, contributors: [pair…], items: [{ hash, bytes, source }] },
//   adapters: [{ name, owner, weightsHash, configHash, rank, provenance: [[datanetIndex, ppm]], pricePer1k }],
//   prompts: [{ name, owner, hash, price }],
//   payer: { pair, credit }, worker: { address, funds },
// }
// Returns { baseModel, datanet, items: Map(hash → { item, contributor }), adapters: { name → id },
// prompts: { name → id } }.
export async function setupLedger({ api, dev }, plan) {
  const alice = dev.alice;
  const [model] = await sendAll(api, [
    [api.tx.sudo.sudo(api.tx.registry.registerBaseModel(plan.model.name, 'llama', plan.model.hash)), alice],
  ]);
  const baseModel = findEvent(model.events, 'registry', 'BaseModelRegistered').data[0].toNumber();

  const owner = plan.datanet.owner;
  const [created] = await sendAll(api, [
    [api.tx.dataNets.createDatanet(plan.datanet.name, plan.model.hash, 'ipfs://demo', 'CC-BY-4.0', OPEN / 100n), owner],
  ]);
  const datanet = findEvent(created.events, 'dataNets', 'DataNetCreated').data[0].toNumber();

  // Contributors take turns; each item is accepted by the owner (a curator).
  const contributions = plan.datanet.items.map((it, n) => {
    const contributor = plan.datanet.contributors[n % plan.datanet.contributors.length];
    return [api.tx.dataNets.contribute(datanet, it.hash, it.bytes), contributor];
  });
  const contributed = await sendAll(api, contributions);
  const items = new Map();
  contributed.forEach((r, n) => {
    const item = findEvent(r.events, 'dataNets', 'Contributed').data[1].toNumber();
    items.set(plan.datanet.items[n].hash, { item, contributor: contributions[n][1].address, source: plan.datanet.items[n].source });
  });
  await sendAll(api, [...items.values()].map(({ item }) => [api.tx.dataNets.accept(datanet, item), owner]));

  // Adapters and prompts register in two steps: a commitment first, the registration with its
  // salt in a later block (the registry's defence against front-running).
  const salts = [...plan.adapters, ...plan.prompts].map(() => randomAsU8a(32));
  const commitments = [
    ...plan.adapters.map((a, n) => [a.owner, 'adapter', a.weightsHash, salts[n]]),
    ...plan.prompts.map((p, n) => [p.owner, 'prompt', p.hash, salts[plan.adapters.length + n]]),
  ].map(([owner, kind, hash, salt]) => [api.tx.registry.commitRegistration(registrationCommitment(kind, owner.address, hash, salt)), owner]);
  await sendAll(api, commitments);
  const adapterTxs = plan.adapters.map((a, n) => [
    api.tx.registry.registerAdapter(baseModel, a.weightsHash, a.configHash, a.rank, `file://${a.name}`,
      a.provenance.map(([, ppm]) => [datanet, ppm]), a.pricePer1k, salts[n]),
    a.owner,
  ]);
  const promptTxs = plan.prompts.map((p, n) => [
    api.tx.registry.registerPrompt(p.hash, `file://${p.name}.json`, p.price, salts[plan.adapters.length + n]),
    p.owner,
  ]);
  const fundTxs = [
    [api.tx.balances.transferKeepAlive(plan.worker.address, plan.worker.funds), alice],
    [api.tx.attribution.deposit(plan.payer.credit), plan.payer.pair],
  ];
  const registered = await sendAll(api, [...adapterTxs, ...promptTxs, ...fundTxs]);
  const adapters = {};
  plan.adapters.forEach((a, n) => {
    adapters[a.name] = findEvent(registered[n].events, 'registry', 'AdapterRegistered').data[0].toNumber();
  });
  const prompts = {};
  plan.prompts.forEach((p, n) => {
    prompts[p.name] = findEvent(registered[adapterTxs.length + n].events, 'registry', 'PromptRegistered').data[0].toNumber();
  });
  return { baseModel, datanet, items, adapters, prompts };
}

// Sets the payer's allowance for a worker.
export async function setAllowance({ api }, payer, worker, amount) {
  await sendAll(api, [[api.tx.attribution.setAllowance(worker, amount), payer]]);
}

// Every settled receipt from block `from` to the best block: { receiptId → { block, fee, payer,
// worker, payouts: Map(account → amount) } }, as each receipt's `ReceiptSettled` event gives them.
export async function settledReceipts(api, from) {
  const best = (await api.rpc.chain.getHeader()).number.toNumber();
  const receipts = new Map();
  for (let n = from; n <= best; n++) {
    const hash = await api.rpc.chain.getBlockHash(n);
    const events = await (await api.at(hash)).query.system.events();
    for (const { event } of events) {
      if (event.section === 'attribution' && event.method === 'ReceiptSettled') {
        const { receiptId, worker, payer, fee, payouts } = event.data;
        receipts.set(receiptId.toHex(), {
          block: n,
          fee: fee.toBigInt(),
          payer: payer.toString(),
          worker: worker.toString(),
          payouts: new Map(payouts.map(([account, amount]) => [account.toString(), amount.toBigInt()])),
        });
      }
    }
  }
  return receipts;
}

// `amount` base units as OPEN with `digits` decimals.
export function formatOpen(amount, digits = 6) {
  const scale = 10n ** BigInt(18 - digits);
  const units = amount / scale;
  const whole = units / 10n ** BigInt(digits);
  const fraction = (units % 10n ** BigInt(digits)).toString().padStart(digits, '0');
  return `${whole}.${fraction}`;
}
