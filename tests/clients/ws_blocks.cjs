// node ws_blocks.cjs ethers|viem WS_URL COUNT [CHAIN_ID]
// Subscribes to new blocks over WebSocket the way a dApp does — ethers v6
// `WebSocketProvider.on("block")`, or viem `watchBlocks` on a `webSocket` transport (both
// use eth_subscribe newHeads) — until COUNT blocks arrived, then prints one JSON line:
// {"blocks": [{"number": N, "hash": "0x…"}, …]} in the order they arrived.
// With ethers the hash comes from `getBlock(N)` over the same socket (a plain call).
// Run by tests/testbed (node_client) with NODE_PATH=testbed/node_modules.
"use strict";

const TIMEOUT_MS = 45_000;

async function withEthers(url, count, chainId) {
  const { WebSocketProvider } = require("ethers");
  const provider = new WebSocketProvider(url, chainId, { staticNetwork: true });
  const blocks = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${blocks.length} of ${count} blocks`)), TIMEOUT_MS);
    // Calls are queued in order; each block's hash is read in arrival order.
    let chain = Promise.resolve();
    provider.on("block", (number) => {
      chain = chain.then(async () => {
        const block = await provider.getBlock(number);
        blocks.push({ number, hash: block.hash });
        if (blocks.length === count) {
          clearTimeout(timer);
          resolve();
        }
      }).catch(reject);
    });
  });
  await provider.destroy();
  return blocks.slice(0, count);
}

async function withViem(url, count) {
  const { createPublicClient, webSocket } = require("viem");
  const { foundry } = require("viem/chains");
  const client = createPublicClient({ chain: foundry, transport: webSocket(url) });
  const blocks = [];
  let unwatch = () => {};
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${blocks.length} of ${count} blocks`)), TIMEOUT_MS);
    unwatch = client.watchBlocks({
      onBlock: (block) => {
        blocks.push({ number: Number(block.number), hash: block.hash });
        if (blocks.length === count) {
          clearTimeout(timer);
          resolve();
        }
      },
      onError: (e) => {
        clearTimeout(timer);
        reject(e);
      },
    });
  });
  unwatch();
  return blocks.slice(0, count);
}

async function main() {
  const [lib, url, count, chainId = "31337"] = process.argv.slice(2);
  if (!["ethers", "viem"].includes(lib) || !url || !count) {
    console.error("usage: node ws_blocks.cjs ethers|viem WS_URL COUNT [CHAIN_ID]");
    process.exit(2);
  }
  const blocks = lib === "ethers"
    ? await withEthers(url, Number(count), Number(chainId))
    : await withViem(url, Number(count));
  console.log(JSON.stringify({ blocks }));
  // viem keeps its socket for reuse: leave without waiting for it.
  process.exit(0);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
