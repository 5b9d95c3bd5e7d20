// node dapp_viem.cjs HTTP_URL WS_URL
// A dapp's day with viem, the way its docs show it: reads, fee data, an ETH transfer
// and its receipt, deploying Token (tests/fixtures/token.hex), transfer, balanceOf,
// estimateGas, getLogs, event filters and watchers over HTTP (eth_newFilter & co.)
// and blocks and logs over WebSocket. Each step checks its answer; any failure exits 1
// naming the step. Prints one JSON line: {"steps": [...], "polls": N}.
// Blocks are mined by the test (tests/compat.rs) while this runs.
// Run by tests/testbed (node_client) with NODE_PATH=testbed/node_modules.
"use strict";

const fs = require("fs");
const {
  createPublicClient, createWalletClient, http, webSocket, parseAbi, parseEther, parseGwei,
} = require("viem");
const { privateKeyToAccount } = require("viem/accounts");
const { foundry } = require("viem/chains");

const KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const SUPPLY = 1000n;
const ABI = parseAbi([
  "constructor(uint256 supply)",
  "function balanceOf(address) view returns (uint256)",
  "function transfer(address to, uint256 amount) returns (bool)",
  "event Transfer(address indexed from, address indexed to, uint256 value)",
]);
const WAIT_MS = 30_000;

const steps = [];
async function step(name, f) {
  try {
    const out = await f();
    steps.push(name);
    return out;
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e && e.stack ? e.stack : e}`);
  }
}
function check(cond, what) {
  if (!cond) throw new Error(what);
}
async function until(what, f) {
  const start = Date.now();
  while (Date.now() - start < WAIT_MS) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function main() {
  const [url, wsUrl] = process.argv.slice(2);
  const bytecode = `0x${fs.readFileSync("tests/fixtures/token.hex", "utf8").trim()}`;
  const account = privateKeyToAccount(KEY);
  const transport = http(url, { retryCount: 0 });
  const client = createPublicClient({ chain: foundry, transport, pollingInterval: 200 });
  const wallet = createWalletClient({ account, chain: foundry, transport });
  const ws = createPublicClient({ chain: foundry, transport: webSocket(wsUrl) });

  await step("chainId", async () => check((await client.getChainId()) === 31337, "chain id"));
  const start = await step("blockNumber", () => client.getBlockNumber());
  await step("getBalance", async () => check((await client.getBalance({ address: account.address })) > 0n, "balance"));
  await step("getBlock", async () => check((await client.getBlock()).number >= start, "block"));
  await step("fees", async () => {
    const price = await client.getGasPrice();
    const fees = await client.estimateFeesPerGas();
    check(price > 0n && fees.maxFeePerGas > 0n, `fees ${price} ${fees.maxFeePerGas}`);
  });

  // Watchers first, so they see what follows.
  const blockFilter = await step("createBlockFilter", () => client.createBlockFilter());
  const pendingFilter = await step("createPendingTransactionFilter", () => client.createPendingTransactionFilter());
  const wsBlocks = [];
  const unwatchWsBlocks = await step("ws watchBlocks", () => ws.watchBlocks({ onBlock: (b) => wsBlocks.push(b.number), onError: () => {} }));

  const before = await client.getBalance({ address: TO });
  const sent = await step("sendTransaction", () => wallet.sendTransaction({ to: TO, value: parseEther("1") }));
  const receipt = await step("waitForTransactionReceipt", () => client.waitForTransactionReceipt({ hash: sent, pollingInterval: 200 }));
  check(receipt.status === "success", "transfer status");
  await step("balance right after the receipt", async () => {
    const after = await client.getBalance({ address: TO });
    check(after === before + parseEther("1"), `balance ${after}, expected ${before + parseEther("1")}`);
  });
  await step("blockNumber right after the receipt", async () => {
    // cacheTime 0: ask Outlast. viem keeps the last block number for `cacheTime` (here the
    // 200 ms polling interval), and the receipt's own watcher may have stored one read
    // just before the block was mined: that would test viem's cache, not Outlast.
    const n = await client.getBlockNumber({ cacheTime: 0 });
    check(n >= receipt.blockNumber, `blockNumber ${n} below the receipt's ${receipt.blockNumber}`);
  });

  const deployHash = await step("deployContract", () => wallet.deployContract({ abi: ABI, bytecode, args: [SUPPLY] }));
  const deployed = await step("deploy receipt", () => client.waitForTransactionReceipt({ hash: deployHash, pollingInterval: 200 }));
  const token = deployed.contractAddress;
  await step("getCode right after the receipt", async () => {
    const code = await client.getCode({ address: token });
    check(code && code.length > 2, "no code");
  });
  await step("readContract balanceOf", async () => {
    check((await client.readContract({ address: token, abi: ABI, functionName: "balanceOf", args: [account.address] })) === SUPPLY, "supply");
  });

  const eventFilter = await step("createContractEventFilter", () => client.createContractEventFilter({ address: token, abi: ABI, eventName: "Transfer" }));
  const httpEvents = [];
  const unwatchHttp = await step("watchContractEvent (HTTP)", () => client.watchContractEvent({
    address: token, abi: ABI, eventName: "Transfer", poll: true, pollingInterval: 200,
    onLogs: (logs) => httpEvents.push(...logs), onError: () => {},
  }));
  const wsEvents = [];
  const unwatchWs = await step("watchContractEvent (WebSocket)", () => ws.watchContractEvent({
    address: token, abi: ABI, eventName: "Transfer", onLogs: (logs) => wsEvents.push(...logs), onError: () => {},
  }));
  // Let the HTTP watcher make its filter before the transfer.
  await new Promise((r) => setTimeout(r, 600));

  await step("estimateContractGas", async () => {
    const gas = await client.estimateContractGas({ address: token, abi: ABI, functionName: "transfer", args: [TO, 5n], account });
    check(gas > 21000n, `gas ${gas}`);
  });
  const transferHash = await step("writeContract transfer", () => wallet.writeContract({
    address: token, abi: ABI, functionName: "transfer", args: [TO, 5n], maxPriorityFeePerGas: parseGwei("1"),
  }));
  const transferReceipt = await step("transfer receipt", () => client.waitForTransactionReceipt({ hash: transferHash, pollingInterval: 200 }));
  check(transferReceipt.status === "success" && transferReceipt.logs.length === 1, "transfer receipt");
  await step("balanceOf right after the receipt", async () => {
    const b = await client.readContract({ address: token, abi: ABI, functionName: "balanceOf", args: [TO] });
    check(b === 5n, `balanceOf ${b}`);
  });
  await step("getContractEvents (eth_getLogs)", async () => {
    const logs = await client.getContractEvents({ address: token, abi: ABI, eventName: "Transfer", fromBlock: 0n });
    check(logs.length === 2 && logs[1].args.value === 5n, `logs ${logs.length}`);
  });

  let polls = 0;
  const filterLogs = [];
  await step("getFilterChanges (event filter)", () => until("the Transfer in the event filter", async () => {
    polls++;
    filterLogs.push(...(await client.getFilterChanges({ filter: eventFilter })));
    return filterLogs.some((l) => l.transactionHash === transferHash);
  }));
  await step("getFilterLogs", async () => {
    const logs = await client.getFilterLogs({ filter: eventFilter });
    check(logs.some((l) => l.transactionHash === transferHash), "transfer in getFilterLogs");
  });
  const hashes = [];
  await step("getFilterChanges (block filter)", () => until("new blocks in the block filter", async () => {
    polls++;
    hashes.push(...(await client.getFilterChanges({ filter: blockFilter })));
    return hashes.length >= 3;
  }));
  await step("getFilterChanges (pending filter)", async () => {
    polls++;
    check(Array.isArray(await client.getFilterChanges({ filter: pendingFilter })), "pending changes");
  });
  await step("watchContractEvent (HTTP) delivered", () => until("the Transfer over HTTP", () => httpEvents.some((l) => l.transactionHash === transferHash)));
  await step("watchContractEvent (WebSocket) delivered", () => until("the Transfer over WebSocket", () => wsEvents.some((l) => l.transactionHash === transferHash)));
  await step("watchBlocks (WebSocket) delivered", () => until("blocks over WebSocket", () => wsBlocks.length >= 2));
  await step("uninstallFilter", async () => check(await client.uninstallFilter({ filter: blockFilter }), "uninstalled"));
  unwatchHttp();
  unwatchWs();
  unwatchWsBlocks();
  await ws.transport.getRpcClient().then((c) => c.close()).catch(() => {});
  console.log(JSON.stringify({ steps, polls, httpEvents: httpEvents.length, wsEvents: wsEvents.length }));
}

main().then(() => process.exit(0), (e) => {
  console.error(String(e && e.stack ? e.stack : e));
  console.error(`steps passed: ${steps.join(", ")}`);
  process.exit(1);
});
