// Shared helpers for the end-to-end tests: connect, sign and send, wait for finality, decode errors.
import { before, after } from 'node:test';
import { createServer } from 'node:net';
import { ApiPromise, WsProvider } from '@polkadot/api';
import { Keyring } from '@polkadot/keyring';
import { blake2AsU8a, cryptoWaitReady, decodeAddress, randomAsU8a } from '@polkadot/util-crypto';
import { hexToU8a, u8aConcat } from '@polkadot/util';

export async function connect(url = process.env.OPENLEDGER_WS) {
  if (!url) throw new Error('set OPENLEDGER_WS to the node\'s ws:// address');
  await cryptoWaitReady();
  const api = await ApiPromise.create({ provider: new WsProvider(url), noInitWarn: true });
  const keyring = new Keyring({ type: 'sr25519', ss58Format: 42 });
  const dev = Object.fromEntries(
    ['Alice', 'Bob', 'Charlie', 'Dave', 'Eve', 'Ferdie'].map((n) => [n.toLowerCase(), keyring.addFromUri(`//${n}`)]),
  );
  return { api, keyring, dev };
}

// Signs and sends `tx`, resolves once its block is finalized with the events of that extrinsic and
// the dispatch error (decoded to "pallet.Error"), if any. Rejects on timeout.
export function send(api, tx, signer, timeoutMs = 60_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not finalized in ${timeoutMs} ms`)), timeoutMs);
    let unsub = () => {};
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      if (!status.isFinalized) return;
      clearTimeout(timer);
      unsub();
      let error = null;
      if (dispatchError) {
        if (dispatchError.isModule) {
          const meta = api.registry.findMetaError(dispatchError.asModule);
          error = `${meta.section}.${meta.name}`;
        } else {
          error = dispatchError.toString();
        }
      }
      resolve({ events: events.map(({ event }) => event), error, blockHash: status.asFinalized });
    }).then((u) => { unsub = u; }, (e) => { clearTimeout(timer); reject(e); });
  });
}

// The first event `section.method` among `events`, or throws listing what was there.
// A registration's commitment, as the registry pallet computes it (`registration_commitment`):
// blake2-256 of the kind's byte (0 adapter, 1 prompt template), the registrant's 32 account bytes,
// the hash to register and a 32-byte salt.
export function registrationCommitment(kind, address, hash, salt) {
  const byte = { adapter: 0, prompt: 1 }[kind];
  if (byte === undefined) throw new Error(`no registration kind ${kind}`);
  return blake2AsU8a(u8aConcat(new Uint8Array([byte]), decodeAddress(address), hexToU8a(hash), salt));
}

// The first of a registration's two transactions: commits `signer` to registering `hash` as
// `kind` ('adapter' or 'prompt') under a fresh salt, which nobody else can learn the hash from.
// Resolves with the salt once the commitment is final; the registration, sent after, is then in
// a later block, as the pallet's `CommitmentDelay` of one block asks.
export async function commitRegistration(api, signer, kind, hash) {
  const salt = randomAsU8a(32);
  const r = await send(api, api.tx.registry.commitRegistration(registrationCommitment(kind, signer.address, hash, salt)), signer);
  if (r.error) throw new Error(`registry.commitRegistration: ${r.error}`);
  return salt;
}

export function findEvent(events, section, method) {
  const found = events.find((e) => e.section === section && e.method === method);
  if (!found) {
    throw new Error(`no ${section}.${method} in [${events.map((e) => `${e.section}.${e.method}`).join(', ')}]`);
  }
  return found;
}

// Connects before the file's tests and disconnects after them; the returned object is filled in
// by the time a test runs.
export function useDevNode() {
  const node = {};
  before(async () => {
    Object.assign(node, await connect());
  });
  after(async () => {
    await node.api?.disconnect();
  });
  return node;
}

// `count` distinct free loopback ports: all held open until every one is known, since ports
// taken one at a time can repeat (and a node whose RPC port is taken serves RPC elsewhere).
export async function freePorts(count) {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  })));
  const ports = servers.map((server) => server.address().port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

// Polls `check` until it returns something truthy, and returns that; throws after `timeoutMs`.
export async function waitFor(what, check, { timeoutMs = 30_000, intervalMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
