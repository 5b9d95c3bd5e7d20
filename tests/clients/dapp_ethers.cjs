// node dapp_ethers.cjs HTTP_URL WS_URL
// A dapp's day with ethers v6, the way its docs show it: reads, fee data, an ETH
// transfer and its receipt, deploying Token (tests/fixtures/token.hex), transfer,
// balanceOf, estimateGas, queryFilter (eth_getLogs), `contract.on` over HTTP (ethers
// polls eth_newFilter/eth_getFilterChanges) and over WebSocket (eth_subscribe), and
// raw filter calls. Each step checks its answer; any failure exits 1 naming the step.
// Prints one JSON line: {"steps": [...], "polls": N}.
// Blocks are mined by the test (tests/compat.rs) while this runs.
// Run by tests/testbed (node_client) with NODE_PATH=testbed/node_modules.
"use strict";

const fs = require("fs");
const {
  JsonRpcProvider, WebSocketProvider, Wallet, NonceManager, ContractFactory, Contract, parseEther,
} = require("ethers");

const KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const SUPPLY = 1000n;
const ABI = [
  "constructor(uint256 supply)",
  "function balanceOf(address) view returns (uint256)",
  "function transfer(address to, uint256 amount) returns (bool)",
  "event Transfer(address indexed from, address indexed to, uint256 value)",
];
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
  const provider = new JsonRpcProvider(url, 31337, { staticNetwork: true, pollingInterval: 200 });
  provider.pollingInterval = 200;
  const ws = new WebSocketProvider(wsUrl, 31337, { staticNetwork: true });
  // ethers reuses an identical call's answer for 250 ms: a NonceManager keeps nonces.
  const signer = new NonceManager(new Wallet(KEY, provider));
  const me = await signer.getAddress();

  await step("getNetwork", async () => check((await provider.getNetwork()).chainId === 31337n, "chain id"));
  const start = await step("getBlockNumber", () => provider.getBlockNumber());
  await step("getBalance", async () => check((await provider.getBalance(me)) > 0n, "balance"));
  await step("getBlock", async () => check((await provider.getBlock("latest")).number >= start, "block"));
  await step("getFeeData", async () => {
    const fees = await provider.getFeeData();
    check(fees.gasPrice > 0n && fees.maxFeePerGas > 0n, `fees ${fees.gasPrice} ${fees.maxFeePerGas}`);
  });

  const wsBlocks = [];
  await step("ws on(block)", () => ws.on("block", (n) => wsBlocks.push(n)));
  const blockFilter = await step("eth_newBlockFilter", () => provider.send("eth_newBlockFilter", []));

  const before = await provider.getBalance(TO);
  const tx = await step("sendTransaction", () => signer.sendTransaction({ to: TO, value: parseEther("1") }));
  const receipt = await step("tx.wait", () => tx.wait());
  check(receipt.status === 1, "transfer status");
  await step("balance right after the receipt", async () => {
    const after = await provider.getBalance(TO, "latest");
    check(after === before + parseEther("1"), `balance ${after}, expected ${before + parseEther("1")}`);
  });
  await step("getBlockNumber right after the receipt", async () => {
    const n = await provider.send("eth_blockNumber", []);
    check(Number(n) >= receipt.blockNumber, `blockNumber ${n} below the receipt's ${receipt.blockNumber}`);
  });

  const factory = new ContractFactory(ABI, bytecode, signer);
  const token = await step("deploy", () => factory.deploy(SUPPLY));
  await step("waitForDeployment", () => token.waitForDeployment());
  const address = await token.getAddress();
  await step("getCode right after the deploy", async () => {
    const code = await provider.getCode(address);
    check(code && code.length > 2, "no code");
  });
  const reader = new Contract(address, ABI, provider);
  await step("balanceOf", async () => check((await reader.balanceOf(me)) === SUPPLY, "supply"));

  const httpEvents = [];
  await step("contract.on (HTTP)", () => reader.on("Transfer", (from, to, value, ev) => httpEvents.push(ev.log)));
  const wsEvents = [];
  const wsToken = new Contract(address, ABI, ws);
  await step("contract.on (WebSocket)", () => wsToken.on("Transfer", (from, to, value, ev) => wsEvents.push(ev.log)));
  const logFilter = await step("eth_newFilter", () => provider.send("eth_newFilter", [{ address, fromBlock: "0x0" }]));
  // Let the HTTP listener make its filter before the transfer.
  await new Promise((r) => setTimeout(r, 600));

  const writer = token.connect(signer);
  await step("estimateGas", async () => {
    const gas = await writer.transfer.estimateGas(TO, 5n);
    check(gas > 21000n, `gas ${gas}`);
  });
  const sent = await step("transfer", () => writer.transfer(TO, 5n));
  const transferReceipt = await step("transfer wait", () => sent.wait());
  check(transferReceipt.status === 1 && transferReceipt.logs.length === 1, "transfer receipt");
  await step("balanceOf right after the receipt", async () => {
    const b = await reader.balanceOf(TO);
    check(b === 5n, `balanceOf ${b}`);
  });
  await step("queryFilter (eth_getLogs)", async () => {
    const logs = await reader.queryFilter(reader.filters.Transfer(), 0);
    check(logs.length === 2 && logs[1].args.value === 5n, `logs ${logs.length}`);
  });

  let polls = 0;
  const changes = [];
  await step("eth_getFilterChanges (log filter)", () => until("the Transfer in the log filter", async () => {
    polls++;
    changes.push(...(await provider.send("eth_getFilterChanges", [logFilter])));
    return changes.some((l) => l.transactionHash === sent.hash);
  }));
  await step("eth_getFilterLogs", async () => {
    const logs = await provider.send("eth_getFilterLogs", [logFilter]);
    check(logs.length === 2, `filter logs ${logs.length}`);
  });
  const hashes = [];
  await step("eth_getFilterChanges (block filter)", () => until("new blocks in the block filter", async () => {
    polls++;
    hashes.push(...(await provider.send("eth_getFilterChanges", [blockFilter])));
    return hashes.length >= 3;
  }));
  await step("contract.on (HTTP) delivered", () => until("the Transfer over HTTP", () => httpEvents.some((l) => l.transactionHash === sent.hash)));
  await step("contract.on (WebSocket) delivered", () => until("the Transfer over WebSocket", () => wsEvents.some((l) => l.transactionHash === sent.hash)));
  await step("on(block) (WebSocket) delivered", () => until("blocks over WebSocket", () => wsBlocks.length >= 2));
  await step("eth_uninstallFilter", async () => check((await provider.send("eth_uninstallFilter", [logFilter])) === true, "uninstalled"));
  await reader.removeAllListeners();
  await wsToken.removeAllListeners();
  provider.destroy();
  await ws.destroy();
  console.log(JSON.stringify({ steps, polls, httpEvents: httpEvents.length, wsEvents: wsEvents.length }));
}

main().then(() => process.exit(0), (e) => {
  console.error(String(e && e.stack ? e.stack : e));
  console.error(`steps passed: ${steps.join(", ")}`);
  process.exit(1);
});
