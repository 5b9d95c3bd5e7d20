# python3 dapp_web3py.py HTTP_URL WS_URL
# A dapp's day with web3.py, the way its docs show it: reads, fee data, an ETH transfer
# and its receipt, deploying Token (tests/fixtures/token.hex) with the signing
# middleware, transfer, balanceOf, estimate_gas, get_logs, the filter API
# (w3.eth.filter, create_filter, get_new_entries, get_all_entries) over HTTP, and
# newHeads and logs subscriptions over WebSocket (AsyncWeb3 + WebSocketProvider).
# Each step checks its answer; a failure exits 1 naming the step. Prints one JSON line:
# {"steps": [...], "polls": N}. Blocks are mined by the test (tests/compat.rs).
import asyncio
import json
import sys
import threading
import time

from web3 import AsyncWeb3, Web3, WebSocketProvider
from web3.middleware import SignAndSendRawMiddlewareBuilder

KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
SUPPLY = 1000
WAIT = 30
ABI = [
    {"type": "constructor", "inputs": [{"name": "supply", "type": "uint256"}], "stateMutability": "nonpayable"},
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "transfer", "stateMutability": "nonpayable",
     "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
    {"type": "event", "name": "Transfer", "anonymous": False, "inputs": [
        {"name": "from", "type": "address", "indexed": True},
        {"name": "to", "type": "address", "indexed": True},
        {"name": "value", "type": "uint256", "indexed": False}]},
]

steps = []


def step(name, f):
    try:
        out = f()
    except Exception as e:  # noqa: BLE001 - any failure names its step
        raise RuntimeError(f'step "{name}" failed: {e!r}') from e
    steps.append(name)
    return out


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def until(what, f):
    start = time.time()
    while time.time() - start < WAIT:
        if f():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class WsWatcher(threading.Thread):
    """newHeads and a token's logs over WebSocket, on an event loop of its own."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.heads = []
        self.logs = []
        self.address = None
        self.ready = threading.Event()
        self.error = None

    def run(self):
        try:
            asyncio.run(self.watch())
        except Exception as e:  # noqa: BLE001 - reported by the main flow
            self.error = e
            self.ready.set()

    async def watch(self):
        async with AsyncWeb3(WebSocketProvider(self.url)) as w3:
            heads = await w3.eth.subscribe("newHeads")
            logs = await w3.eth.subscribe("logs", {"address": self.address})
            self.ready.set()
            async for msg in w3.socket.process_subscriptions():
                if msg["subscription"] == heads:
                    self.heads.append(msg["result"]["number"])
                elif msg["subscription"] == logs:
                    self.logs.append(msg["result"])


def main():
    url, ws_url = sys.argv[1], sys.argv[2]
    with open("tests/fixtures/token.hex") as f:
        bytecode = "0x" + f.read().strip()
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    acct = w3.eth.account.from_key(KEY)
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(acct), layer=0)
    w3.eth.default_account = acct.address

    step("chain_id", lambda: check(w3.eth.chain_id == 31337, "chain id"))
    start = step("block_number", lambda: w3.eth.block_number)
    step("get_balance", lambda: check(w3.eth.get_balance(acct.address) > 0, "balance"))
    step("get_block", lambda: check(w3.eth.get_block("latest")["number"] >= start, "block"))
    step("gas_price", lambda: check(w3.eth.gas_price > 0, "gas price"))
    step("max_priority_fee", lambda: check(w3.eth.max_priority_fee >= 0, "priority fee"))
    step("fee_history", lambda: check(len(w3.eth.fee_history(3, "latest", [50])["baseFeePerGas"]) > 0, "history"))

    block_filter = step("filter('latest')", lambda: w3.eth.filter("latest"))
    pending_filter = step("filter('pending')", lambda: w3.eth.filter("pending"))

    before = w3.eth.get_balance(TO)
    value = w3.to_wei(1, "ether")
    sent = step("send_transaction (signed locally)", lambda: w3.eth.send_transaction({"to": TO, "value": value}))
    receipt = step("wait_for_transaction_receipt",
                   lambda: w3.eth.wait_for_transaction_receipt(sent, timeout=WAIT, poll_latency=0.2))
    check(receipt["status"] == 1, "transfer status")

    def balance_now():
        after = w3.eth.get_balance(TO)
        check(after == before + value, f"balance {after}, expected {before + value}")
    step("balance right after the receipt", balance_now)
    step("block_number right after the receipt",
         lambda: check(w3.eth.block_number >= receipt["blockNumber"], "block number below the receipt's"))

    Token = w3.eth.contract(abi=ABI, bytecode=bytecode)
    deploy_hash = step("constructor().transact", lambda: Token.constructor(SUPPLY).transact())
    deployed = step("deploy receipt",
                    lambda: w3.eth.wait_for_transaction_receipt(deploy_hash, timeout=WAIT, poll_latency=0.2))
    address = deployed["contractAddress"]
    step("get_code right after the receipt", lambda: check(len(w3.eth.get_code(address)) > 0, "no code"))
    token = w3.eth.contract(address=address, abi=ABI)
    step("balanceOf", lambda: check(token.functions.balanceOf(acct.address).call() == SUPPLY, "supply"))

    event_filter = step("events.Transfer.create_filter",
                        lambda: token.events.Transfer.create_filter(from_block="latest"))
    watcher = WsWatcher(ws_url)
    watcher.address = address
    watcher.start()
    step("WebSocket subscribe newHeads and logs", lambda: check(watcher.ready.wait(WAIT) and not watcher.error,
                                                               f"subscriptions: {watcher.error!r}"))

    step("estimate_gas", lambda: check(token.functions.transfer(TO, 5).estimate_gas() > 21000, "gas"))
    transfer_hash = step("transfer().transact", lambda: token.functions.transfer(TO, 5).transact())
    transfer_receipt = step("transfer receipt", lambda: w3.eth.wait_for_transaction_receipt(
        transfer_hash, timeout=WAIT, poll_latency=0.2))
    check(transfer_receipt["status"] == 1 and len(transfer_receipt["logs"]) == 1, "transfer receipt")
    step("balanceOf right after the receipt",
         lambda: check(token.functions.balanceOf(TO).call() == 5, "balanceOf after transfer"))
    step("events.Transfer.get_logs", lambda: check(
        len(token.events.Transfer.get_logs(from_block=0)) == 2, "two Transfer logs"))

    polls = 0
    entries = []

    def poll_events():
        nonlocal polls
        polls += 1
        entries.extend(event_filter.get_new_entries())
        return any(e["transactionHash"] == transfer_hash for e in entries)
    step("event filter get_new_entries", lambda: until("the Transfer in the event filter", poll_events))
    step("event filter get_all_entries", lambda: check(
        any(e["transactionHash"] == transfer_hash for e in event_filter.get_all_entries()), "get_all_entries"))
    hashes = []

    def poll_blocks():
        nonlocal polls
        polls += 1
        hashes.extend(block_filter.get_new_entries())
        return len(hashes) >= 3
    step("block filter get_new_entries", lambda: until("new blocks in the block filter", poll_blocks))

    def poll_pending():
        nonlocal polls
        polls += 1
        check(isinstance(pending_filter.get_new_entries(), list), "pending entries")
    step("pending filter get_new_entries", poll_pending)
    step("WebSocket logs delivered", lambda: until("the Transfer over WebSocket", lambda: any(
        l["transactionHash"] == transfer_hash for l in watcher.logs)))
    step("WebSocket newHeads delivered", lambda: until("blocks over WebSocket", lambda: len(watcher.heads) >= 2))
    step("uninstall_filter", lambda: check(w3.eth.uninstall_filter(block_filter.filter_id), "uninstalled"))
    print(json.dumps({"steps": steps, "polls": polls, "wsLogs": len(watcher.logs)}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        print(f"{e!r}\nsteps passed: {', '.join(steps)}", file=sys.stderr)
        sys.exit(1)
