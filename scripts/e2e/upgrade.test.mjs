// A runtime upgrade through sudo(system.setCode) on the dev chain: the new runtime (the same code
// built with spec version + 1) takes over, blocks keep coming and state is intact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { u8aToHex } from '@polkadot/util';
import { blake2AsHex } from '@polkadot/util-crypto';
import { useDevNode, send, findEvent } from './lib.mjs';

const node = useDevNode();

test('setCode upgrades the runtime and keeps state', { timeout: 300_000 }, async () => {
  const { api, dev } = node;
  const wasmPath = process.env.OPENLEDGER_UPGRADE_WASM;
  assert.ok(wasmPath, 'set OPENLEDGER_UPGRADE_WASM to the spec-bumped runtime');
  const code = u8aToHex(readFileSync(wasmPath));
  const { alice } = dev;

  const oldVersion = (await api.rpc.state.getRuntimeVersion()).specVersion.toNumber();
  const datanet = (await api.query.dataNets.nextDataNetId()).toNumber();
  let r = await send(api, api.tx.dataNets.createDatanet('before upgrade', blake2AsHex('m'), '', '', 10n ** 16n), alice);
  assert.equal(r.error, null);
  const before = (await api.query.dataNets.dataNets(datanet)).toHex();
  const aliceBalance = (await api.query.system.account(alice.address)).data.free.toBigInt();

  // polkadot.js swaps the new metadata into its default registry in place when it sees the new
  // version, so anything it decodes around that moment (the events a signAndSend subscription
  // reads, a query in flight) may be read with the wrong types. So only submit here, wait until
  // polkadot.js has switched, and then read the blocks' events: api.at() builds a registry from
  // each block's parent runtime, so the setCode block's events decode with the old metadata.
  const sentAt = (await api.rpc.chain.getHeader()).number.toNumber();
  await api.tx.sudo.sudo(api.tx.system.setCode(code)).signAndSend(alice);

  const deadline = Date.now() + 120_000;
  let version = oldVersion;
  while (version === oldVersion && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    version = (await api.rpc.state.getRuntimeVersion()).specVersion.toNumber();
  }
  assert.equal(version, oldVersion + 1);
  while (api.runtimeVersion.specVersion.toNumber() !== version && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.equal(api.runtimeVersion.specVersion.toNumber(), version, 'polkadot.js took the new metadata');

  const start = (await api.rpc.chain.getHeader()).number.toNumber();
  let events;
  for (let n = sentAt + 1; !events && n <= start; n++) {
    const found = (await (await api.at(await api.rpc.chain.getBlockHash(n))).query.system.events()).map(({ event }) => event);
    if (found.some((e) => e.section === 'system' && e.method === 'CodeUpdated')) events = found;
  }
  assert.ok(events, `a block in ${sentAt + 1}..${start} has system.CodeUpdated`);
  assert.equal(findEvent(events, 'sudo', 'Sudid').data.sudoResult.isOk, true, 'setCode dispatched');

  // Blocks keep coming, transactions still work under the new runtime, and old state is intact.
  r = await send(api, api.tx.dataNets.addCurator(datanet, dev.bob.address), alice);
  assert.equal(r.error, null);
  const now = (await api.rpc.chain.getHeader()).number.toNumber();
  assert.ok(now > start, `blocks kept coming (${start} → ${now})`);
  const after = (await api.query.dataNets.dataNets(datanet)).unwrap();
  assert.equal(after.name.toUtf8(), 'before upgrade');
  assert.equal(after.curators.length, 1);
  assert.notEqual((await api.query.dataNets.dataNets(datanet)).toHex(), before, 'the curator was added');
  const balanceNow = (await api.query.system.account(alice.address)).data.free.toBigInt();
  assert.ok(balanceNow <= aliceBalance && aliceBalance - balanceNow < 10n ** 18n, 'balances intact (fees only)');
});
