// A storm of cheap chain events, as anyone could send them (scripts/bench-storm.sh):
//   node storm.mjs storm BLOCKS   Ferdie creates a DataNet of his own, then updates its metadata
//                                 and contributes items (pending, never accepted) to the served
//                                 DataNet 0 in turns, each in a block of its own, BLOCKS times;
//                                 prints {"blocks": N, "seconds": S, "pending": ITEM}
//   node storm.mjs accept ITEM    Bob accepts item ITEM of DataNet 0: a change the worker must act on
// The chain is at $OPENLEDGER_WS.
import { connect, findEvent, send } from '../e2e/lib.mjs';
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
  } else {
    throw new Error('usage: node storm.mjs storm BLOCKS | accept ITEM');
  }
} finally {
  await api.disconnect();
}
