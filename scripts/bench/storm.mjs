// A storm of cheap chain events, as anyone could send them (scripts/bench-storm.sh):
//   node storm.mjs storm BLOCKS   Ferdie creates a DataNet of his own, then updates its metadata
//                                 and contributes items (pending, never accepted) to the served
//                                 DataNet 0 in turns, each in a block of its own, BLOCKS times;
//                                 prints {"blocks": N, "seconds": S, "pending": ITEM}
//   node storm.mjs accept ITEM    Bob accepts item ITEM of DataNet 0: a change the worker must act on
//   node storm.mjs tools N        Ferdie registers N MCP tools: a registry for the worker to hold
//   node storm.mjs registry BLOCKS Ferdie changes his first tool's price, and a dev account
//                                 commits to a registration, in turns, each in a block of its own,
//                                 BLOCKS times;
//                                 prints {"blocks": N, "seconds": S}
// The chain is at $OPENLEDGER_WS.
import { connect, findEvent, registrationCommitment, send } from '../e2e/lib.mjs';
import { blake2AsHex } from '../e2e/ledger.mjs';

const [command, arg] = process.argv.slice(2);
const node = await connect();
const { api, dev } = node;
const sent = async (tx, who, what) => {
  const r = await send(api, tx, who);
  if (r.error) throw new Error(`${what}: ${r.error}`);
  return r;
};
try {
  if (command === 'storm') {
    const blocks = Number(arg ?? 60);
    const created = await sent(api.tx.dataNets.createDatanet('storm', blake2AsHex('storm'), 'ipfs://storm', 'CC0', 10n ** 16n),
      dev.ferdie, 'createDatanet');
    const own = findEvent(created.events, 'dataNets', 'DataNetCreated').data.datanet.toNumber();
    const started = Date.now();
    let pending = null;
    for (let n = 0; n < blocks; n++) {
      const update = n % 2 === 0;
      const tx = update
        ? api.tx.dataNets.updateMetadata(own, `storm ${n}`, blake2AsHex(`storm ${n}`), 'ipfs://storm', 'CC0')
        : api.tx.dataNets.contribute(0, blake2AsHex(`storm item ${n}`), 100);
      const r = await sent(tx, dev.ferdie, update ? 'updateMetadata' : 'contribute');
      if (!update) pending ??= findEvent(r.events, 'dataNets', 'Contributed').data.item.toNumber();
      process.stderr.write(`\rstorm: ${n + 1}/${blocks} blocks`);
    }
    process.stderr.write('\n');
    console.log(JSON.stringify({ blocks, seconds: (Date.now() - started) / 1000, pending }));
  } else if (command === 'accept') {
    await sent(api.tx.dataNets.accept(0, Number(arg)), dev.bob, 'accept');
  } else if (command === 'tools') {
    const count = Number(arg ?? 100);
    for (let n = 0; n < count; n++) {
      await sent(api.tx.registry.registerTool('http://127.0.0.1:9/mcp', `storm_${n}`, blake2AsHex(`storm tool ${n}`), 1), dev.ferdie, 'registerTool');
      process.stderr.write(`\rtools: ${n + 1}/${count} registered`);
    }
    process.stderr.write('\n');
  } else if (command === 'registry') {
    const blocks = Number(arg ?? 60);
    const tools = await api.query.registry.tools.entries();
    const tool = tools.find(([, t]) => t.unwrap().owner.toString() === dev.ferdie.address)?.[0].args[0];
    if (tool === undefined) throw new Error('Ferdie has no tool: run `storm.mjs tools N` first');
    const started = Date.now();
    for (let n = 0; n < blocks; n++) {
      const price = n % 2 === 0;
      // Commitments come from every dev account in turn: an account may have 8 waiting.
      const who = price ? dev.ferdie : Object.values(dev)[(n >> 1) % Object.keys(dev).length];
      const tx = price
        ? api.tx.registry.setToolPrice(tool, 1 + n)
        : api.tx.registry.commitRegistration(registrationCommitment('adapter', who.address, blake2AsHex(`storm ${n}`), new Uint8Array(32)));
      await sent(tx, who, price ? 'setToolPrice' : 'commitRegistration');
      process.stderr.write(`\rregistry storm: ${n + 1}/${blocks} blocks`);
    }
    process.stderr.write('\n');
    console.log(JSON.stringify({ blocks, seconds: (Date.now() - started) / 1000 }));
  } else {
    throw new Error('usage: node storm.mjs storm BLOCKS | accept ITEM | tools N | registry BLOCKS');
  }
} finally {
  await api.disconnect();
}
