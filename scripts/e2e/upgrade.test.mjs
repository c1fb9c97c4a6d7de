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

  const sentAt = (await api.rpc.chain.getHeader()).number.toNumber();
  // The subscription may decode this block's events while polkadot.js swaps in the new
  // runtime's metadata, and then see none or fail to decode them; so find the block and read
  // its events with the metadata of that block.
  let blockHash;
  try {
    r = await send(api, api.tx.sudo.sudo(api.tx.system.setCode(code)), alice, 120_000);
    assert.equal(r.error, null);
    blockHash = r.blockHash;
  } catch (e) {
    if (!/decode/i.test(String(e))) throw e;
    for (let n = sentAt + 1; !blockHash && n <= sentAt + 20; n++) {
      while ((await api.rpc.chain.getHeader()).number.toNumber() < n) await new Promise((res) => setTimeout(res, 500));
      const hash = await api.rpc.chain.getBlockHash(n);
      const found = (await (await api.at(hash)).query.system.events()).some(({ event }) => event.section === 'system' && event.method === 'CodeUpdated');
      if (found) blockHash = hash;
    }
  }
  assert.ok(blockHash, 'the setCode block was found');
  const events = (await (await api.at(blockHash)).query.system.events()).map(({ event }) => event);
  assert.equal(findEvent(events, 'sudo', 'Sudid').data.sudoResult.isOk, true, 'setCode dispatched');
  findEvent(events, 'system', 'CodeUpdated');

  const start = (await api.rpc.chain.getHeader()).number.toNumber();
  const deadline = Date.now() + 60_000;
  let version = oldVersion;
  while (version === oldVersion && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    version = (await api.rpc.state.getRuntimeVersion()).specVersion.toNumber();
  }
  assert.equal(version, oldVersion + 1);
  // polkadot.js swaps in the new metadata when its own runtime-version subscription fires, which
  // can come after the node reports the new version; decoding before that fails.
  while (api.runtimeVersion.specVersion.toNumber() !== version && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.equal(api.runtimeVersion.specVersion.toNumber(), version, 'polkadot.js took the new metadata');

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
