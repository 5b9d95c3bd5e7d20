// node ethers_read.cjs URL ADDRESS [CHAIN_ID]
// Reads the block number and ADDRESS's balance through ethers v6, as a dApp would,
// and prints one JSON line: {"blockNumber": N, "balance": "decimal wei"}.
// Run by tests/testbed (node_client) with NODE_PATH=testbed/node_modules.
"use strict";
const { JsonRpcProvider } = require("ethers");

async function main() {
  const [url, address, chainId = "31337"] = process.argv.slice(2);
  if (!url || !address) {
    console.error("usage: node ethers_read.cjs URL ADDRESS [CHAIN_ID]");
    process.exit(2);
  }
  // staticNetwork: no eth_chainId probing, and no endless retry when the URL is down.
  const provider = new JsonRpcProvider(url, Number(chainId), { staticNetwork: true });
  try {
    const blockNumber = await provider.getBlockNumber();
    const balance = await provider.getBalance(address);
    console.log(JSON.stringify({ blockNumber, balance: balance.toString() }));
  } finally {
    provider.destroy();
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
