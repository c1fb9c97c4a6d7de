// polkadot.js against a running dev node: every registration of the OpenLedger pallets, read back
// through api.query, and bad input answered with the pallet's own error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Keyring } from '@polkadot/keyring';
import { blake2AsHex } from '@polkadot/util-crypto';
import { useDevNode, send, findEvent, commitRegistration } from './lib.mjs';

const node = useDevNode();

test('metadata is V15 or later and needs no custom types', async () => {
  const { api, dev } = node;
  const versions = await api.call.metadata.metadataVersions();
  assert.ok(versions.some((v) => v.toNumber() >= 15), `versions: ${versions}`);
  assert.equal(api.registry.chainTokens[0], 'OPEN');
  assert.equal(api.registry.chainDecimals[0], 18);
});

// The worker's chain client is generated from this file at build time; a stale one builds fine
// and fails only when a call or storage item it uses changed shape.
test('the worker\'s committed metadata is the running runtime\'s', async () => {
  const { api } = node;
  const committed = readFileSync(new URL('../../worker/ledger/metadata/openledger.scale', import.meta.url));
  const live = (await api.call.metadata.metadataAtVersion(15)).unwrap().toU8a(true);
  assert.ok(
    Buffer.from(live).equals(committed),
    `worker/ledger/metadata/openledger.scale (${committed.length} bytes) differs from the runtime's metadata V15 (${live.length} bytes): run scripts/refresh-metadata.sh`,
  );
});

test('DataNets, registry, workers and credit through polkadot.js', async () => {
  const { api, dev } = node;
  const { alice, bob, charlie, dave, eve } = dev;
  const datanet = (await api.query.dataNets.nextDataNetId()).toNumber();

  let r = await send(api, api.tx.dataNets.createDatanet('e2e docs', blake2AsHex('meta'), 'ipfs://meta', 'CC-BY-4.0', 10n ** 16n), alice);
  assert.equal(r.error, null);
  assert.equal(findEvent(r.events, 'dataNets', 'DataNetCreated').data.datanet.toNumber(), datanet);

  const items = ['OpenLedger pays data contributors.', 'Adapters are loaded on demand.'];
  for (const text of items) {
    r = await send(api, api.tx.dataNets.contribute(datanet, blake2AsHex(text), text.length), bob);
    assert.equal(r.error, null);
    const item = findEvent(r.events, 'dataNets', 'Contributed').data.item.toNumber();
    r = await send(api, api.tx.dataNets.accept(datanet, item), alice);
    assert.equal(r.error, null);
    findEvent(r.events, 'dataNets', 'ContributionAccepted');
  }
  const net = (await api.query.dataNets.dataNets(datanet)).unwrap();
  assert.equal(net.owner.toString(), alice.address);
  assert.equal(net.acceptedItems.toNumber(), 2);
  const first = (await api.query.dataNets.contributions(datanet, 0)).unwrap();
  assert.equal(first.contentHash.toHex(), blake2AsHex(items[0]));
  assert.equal(first.status.toString(), 'Accepted');

  const baseModel = (await api.query.registry.nextBaseModelId()).toNumber();
  r = await send(api, api.tx.sudo.sudo(api.tx.registry.registerBaseModel('SmolLM2-135M-Instruct', 'llama', blake2AsHex('gguf'))), alice);
  assert.equal(r.error, null);
  assert.equal(findEvent(r.events, 'sudo', 'Sudid').data.sudoResult.isOk, true);
  findEvent(r.events, 'registry', 'BaseModelRegistered');

  const adapter = (await api.query.registry.nextAdapterId()).toNumber();
  const loraSalt = await commitRegistration(api, charlie, 'adapter', blake2AsHex('lora'));
  r = await send(api, api.tx.registry.registerAdapter(baseModel, blake2AsHex('lora'), blake2AsHex('cfg'), 16, 'ipfs://lora', [[datanet, 600_000]], 10n ** 15n, loraSalt), charlie);
  assert.equal(r.error, null);
  findEvent(r.events, 'registry', 'AdapterRegistered');
  const stored = (await api.query.registry.adapters(adapter)).unwrap();
  assert.equal(stored.owner.toString(), charlie.address);
  assert.equal(stored.provenance[0][1].toNumber(), 600_000);

  // A weights hash names one adapter: another account, committed in time, cannot take it; nor
  // can anyone register without a commitment (one seen in the pool would come too late).
  const squatSalt = await commitRegistration(api, dave, 'adapter', blake2AsHex('lora'));
  r = await send(api, api.tx.registry.registerAdapter(baseModel, blake2AsHex('lora'), blake2AsHex('cfg'), 16, '', [], 1, squatSalt), dave);
  assert.equal(r.error, 'registry.HashTaken');
  r = await send(api, api.tx.registry.registerAdapter(baseModel, blake2AsHex('lora2'), blake2AsHex('cfg'), 16, '', [], 1, squatSalt), dave);
  assert.equal(r.error, 'registry.NoCommitment');
  assert.equal((await api.query.registry.adapterByHash(blake2AsHex('lora'))).unwrap().toNumber(), adapter);

  const prompt = (await api.query.registry.nextPromptId()).toNumber();
  const templateSalt = await commitRegistration(api, charlie, 'prompt', blake2AsHex('template'));
  r = await send(api, api.tx.registry.registerPrompt(blake2AsHex('template'), 'ipfs://tpl', 10n ** 16n, templateSalt), charlie);
  assert.equal(r.error, null);
  assert.equal((await api.query.registry.prompts(prompt)).unwrap().templateHash.toHex(), blake2AsHex('template'));

  const minStake = api.consts.workers.minStake.toBigInt();
  const session = new Keyring({ type: 'sr25519' }).addFromUri('//DaveSession');
  r = await send(api, api.tx.workers.register(session.publicKey, 'http://127.0.0.1:8080', [baseModel], 10n ** 15n, minStake), dave);
  assert.equal(r.error, null, `register: ${r.error}`);
  findEvent(r.events, 'workers', 'WorkerRegistered');
  const worker = (await api.query.workers.workers(dave.address)).unwrap();
  assert.equal(worker.sessionKey.toHex(), `0x${Buffer.from(session.publicKey).toString('hex')}`);
  assert.equal(worker.stake.toBigInt(), minStake);

  r = await send(api, api.tx.attribution.deposit(5n * 10n ** 18n), eve);
  assert.equal(r.error, null);
  findEvent(r.events, 'attribution', 'CreditDeposited');
  const holds = await api.query.balances.holds(eve.address);
  const credit = holds.find((h) => h.id.isAttribution);
  assert.ok(credit, `holds: ${holds.toString()}`);
  assert.equal(credit.amount.toBigInt(), 5n * 10n ** 18n);
});

// An MCP tool is registered with its endpoint, name and definition hash, priced (a rise waits
// out the receipt lifetime, a fall is charged at once), transferred and retired (marked for a
// receipt's lifetime, its deposit still held): all from polkadot.js.
test('an MCP tool is registered, priced, transferred and retired through polkadot.js', async () => {
  const { api, dev } = node;
  const { charlie, dave } = dev;
  const definition = JSON.stringify({ description: 'The weather now', inputSchema: { type: 'object' }, name: 'get_weather' });
  const tool = (await api.query.registry.nextToolId()).toNumber();
  const deposit = api.consts.registry.toolDeposit.toBigInt();
  const heldBefore = async (who) => (await api.query.balances.holds(who)).filter((h) => h.id.isRegistry && h.id.asRegistry.isToolDeposit)
    .reduce((sum, h) => sum + h.amount.toBigInt(), 0n);
  const before = await heldBefore(charlie.address);
  let r = await send(api, api.tx.registry.registerTool('http://127.0.0.1:9/mcp', 'get_weather', blake2AsHex(definition), 10n ** 15n), charlie);
  assert.equal(r.error, null, `registerTool: ${r.error}`);
  assert.equal(findEvent(r.events, 'registry', 'ToolRegistered').data.tool.toNumber(), tool);
  const stored = (await api.query.registry.tools(tool)).unwrap();
  assert.equal(stored.definitionHash.toHex(), blake2AsHex(definition));
  assert.equal(stored.name.toUtf8(), 'get_weather');
  assert.equal(stored.endpoint.toUtf8(), 'http://127.0.0.1:9/mcp');
  assert.equal(await heldBefore(charlie.address), before + deposit);

  r = await send(api, api.tx.registry.setToolPrice(tool, 3n * 10n ** 15n), charlie);
  assert.equal(r.error, null);
  let priced = (await api.query.registry.tools(tool)).unwrap();
  assert.equal(priced.pricePerCall.toBigInt(), 3n * 10n ** 15n);
  assert.equal(priced.priceFloor.price.toBigInt(), 10n ** 15n, 'the rise waits: the old price is the floor');
  r = await send(api, api.tx.registry.setToolPrice(tool, 10n ** 14n), charlie);
  priced = (await api.query.registry.tools(tool)).unwrap();
  assert.equal(priced.priceFloor.price.toBigInt(), 10n ** 14n, 'a fall is charged at once');

  r = await send(api, api.tx.registry.retireTool(tool), dave);
  assert.equal(r.error, 'registry.NotOwner');
  r = await send(api, api.tx.registry.transferTool(tool, dave.address), charlie);
  assert.equal(r.error, null);
  assert.equal((await api.query.registry.tools(tool)).unwrap().owner.toString(), dave.address);
  // Retiring marks it for a receipt's lifetime (receipts of requests served before still pay
  // its owner); only then can the owner remove it and have the deposit released.
  const lifetime = api.consts.attribution.maxReceiptLifetime.toNumber();
  r = await send(api, api.tx.registry.retireTool(tool), dave);
  assert.equal(r.error, null);
  const retiring = findEvent(r.events, 'registry', 'ToolRetiring').data;
  const block = (await api.rpc.chain.getHeader(r.blockHash)).number.toNumber();
  assert.equal(retiring.until.toNumber(), block + lifetime);
  assert.ok((await api.query.registry.tools(tool)).isSome, 'still registered while it retires');
  assert.equal((await api.query.registry.retiring({ Tool: tool })).unwrap().toNumber(), block + lifetime);
  r = await send(api, api.tx.registry.retireTool(tool), dave);
  assert.equal(r.error, 'registry.StillRetiring');
  assert.equal(await heldBefore(charlie.address), before + deposit, 'the deposit stays held meanwhile');
  r = await send(api, api.tx.registry.registerTool('', 'get_weather', blake2AsHex(definition), 1), charlie);
  assert.equal(r.error, 'registry.EmptyEndpoint');
});

test('bad input yields the pallet error and the node keeps going', async () => {
  const { api, dev } = node;
  const { bob } = dev;
  const before = (await api.rpc.chain.getHeader()).number.toNumber();
  const r = await send(api, api.tx.dataNets.contribute(999_999, blake2AsHex('orphan'), 6), bob);
  assert.equal(r.error, 'dataNets.UnknownDataNet');
  findEvent(r.events, 'system', 'ExtrinsicFailed');
  const r2 = await send(api, api.tx.registry.registerAdapter(0, blake2AsHex('x'), blake2AsHex('y'), 0, '', [], 1, new Uint8Array(32)), bob);
  assert.equal(r2.error, 'registry.RankOutOfRange');
  const after = (await api.rpc.chain.getHeader()).number.toNumber();
  assert.ok(after > before, `blocks kept coming (${before} → ${after})`);
});

// Block space has a price (runtime/src/configs: a micro-OPEN per microsecond of weight, a tenth
// of one per byte): the fee polkadot.js quotes is what is taken, and a transfer costs a fraction
// of a milli-OPEN.
test('a transfer pays the fee polkadot.js quoted, a fraction of a milli-OPEN', async () => {
  const { api, dev } = node;
  const { ferdie } = dev;
  const to = new Keyring({ type: 'sr25519' }).addFromUri('//fee-e2e').address;
  const value = 10n ** 18n;
  const tx = api.tx.balances.transferKeepAlive(to, value);
  const quoted = (await tx.paymentInfo(ferdie)).partialFee.toBigInt();
  const milli = 10n ** 15n;
  assert.ok(quoted > milli / 20n && quoted < milli, `a transfer is quoted ${quoted}`);
  const before = (await api.query.system.account(ferdie.address)).data.free.toBigInt();
  const r = await send(api, tx, ferdie);
  assert.equal(r.error, null);
  const paid = findEvent(r.events, 'transactionPayment', 'TransactionFeePaid').data.actualFee.toBigInt();
  assert.equal(paid, quoted);
  const after = (await api.query.system.account(ferdie.address)).data.free.toBigInt();
  assert.equal(before - after, value + paid);
  console.log(`# a transfer costs ${paid} planck (${Number(paid) / 1e15} milli-OPEN)`);
});

test('an owner closes a DataNet: contributions stop, anyone reaps the items (accepted ones after a hold), the deposit comes back', async () => {
  const { api, dev } = node;
  const { bob, charlie, dave } = dev;
  const held = async (who) => (await api.query.balances.holds(who)).filter((h) => h.id.isDataNets)
    .reduce((sum, h) => sum + h.amount.toBigInt(), 0n);
  const datanet = (await api.query.dataNets.nextDataNetId()).toNumber();
  const heldBefore = await held(dave.address);
  let r = await send(api, api.tx.dataNets.createDatanet('to close', blake2AsHex('meta2'), 'ipfs://m2', 'CC0', 10n ** 16n), dave);
  assert.equal(r.error, null);
  r = await send(api, api.tx.dataNets.contribute(datanet, blake2AsHex('closing item'), 12), charlie);
  const item = findEvent(r.events, 'dataNets', 'Contributed').data.item.toNumber();
  // An accepted item leaves in two steps: it still counts as accepted for a receipt's lifetime.
  r = await send(api, api.tx.dataNets.contribute(datanet, blake2AsHex('accepted item'), 14), charlie);
  const accepted = findEvent(r.events, 'dataNets', 'Contributed').data.item.toNumber();
  assert.equal((await send(api, api.tx.dataNets.accept(datanet, accepted), dave)).error, null);
  r = await send(api, api.tx.dataNets.withdrawContribution(datanet, accepted), charlie);
  assert.equal(r.error, null);
  const leaving = findEvent(r.events, 'dataNets', 'ContributionLeaving').data;
  const leftAt = (await api.rpc.chain.getHeader(r.blockHash)).number.toNumber();
  assert.equal(leaving.until.toNumber(), leftAt + api.consts.attribution.maxReceiptLifetime.toNumber());
  assert.ok((await api.query.dataNets.contributions(datanet, accepted)).unwrap().status.isAccepted, 'still accepted');
  assert.equal((await send(api, api.tx.dataNets.withdrawContribution(datanet, accepted), charlie)).error, 'dataNets.StillLeaving');

  assert.equal((await send(api, api.tx.dataNets.closeDatanet(datanet), bob)).error, 'dataNets.NotOwner');
  // A DataNet whose items are pending closes as soon as they are reaped.
  const other = (await api.query.dataNets.nextDataNetId()).toNumber();
  assert.equal((await send(api, api.tx.dataNets.createDatanet('closing', blake2AsHex('meta3'), 'ipfs://m3', 'CC0', 10n ** 16n), dave)).error, null);
  r = await send(api, api.tx.dataNets.contribute(other, blake2AsHex('closing item'), 12), charlie);
  const pendingItem = findEvent(r.events, 'dataNets', 'Contributed').data.item.toNumber();
  r = await send(api, api.tx.dataNets.closeDatanet(datanet), dave);
  assert.equal(findEvent(r.events, 'dataNets', 'ClosingStarted').data.liveItems.toNumber(), 2);
  r = await send(api, api.tx.dataNets.closeDatanet(other), dave);
  assert.equal(findEvent(r.events, 'dataNets', 'ClosingStarted').data.liveItems.toNumber(), 1);
  assert.equal((await api.query.dataNets.dataNets(datanet)).unwrap().closing.isTrue, true);
  r = await send(api, api.tx.dataNets.contribute(datanet, blake2AsHex('too late'), 8), charlie);
  assert.equal(r.error, 'dataNets.DataNetClosing');

  // Anyone reaps: a pending item goes at once; the leaving accepted item only after its hold,
  // so the first DataNet stays, closing, for a receipt's lifetime.
  r = await send(api, api.tx.dataNets.reapItem(datanet, item), bob);
  assert.equal(r.error, null);
  findEvent(r.events, 'dataNets', 'ContributionReaped');
  assert.equal((await send(api, api.tx.dataNets.reapItem(datanet, accepted), bob)).error, 'dataNets.StillLeaving');
  assert.ok((await api.query.dataNets.dataNets(datanet)).isSome);
  // The other's last item reaped, it is removed and its deposit released.
  r = await send(api, api.tx.dataNets.reapItem(other, pendingItem), bob);
  assert.equal(r.error, null);
  const closed = findEvent(r.events, 'dataNets', 'DataNetClosed').data;
  assert.equal(closed.owner.toString(), dave.address);
  assert.ok((await api.query.dataNets.dataNets(other)).isNone);
  assert.equal(await held(dave.address), heldBefore + api.consts.dataNets.dataNetDeposit.toBigInt(),
    'the closed DataNet\'s deposit is released; the closing one\'s is held');
  assert.equal((await send(api, api.tx.dataNets.reapItem(other, pendingItem), bob)).error, 'dataNets.UnknownDataNet');
});
