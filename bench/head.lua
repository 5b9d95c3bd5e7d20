-- wrk script: one eth_blockNumber per request (id 1). Outlast answers it from its
-- consensus head without asking an upstream; direct and nginx go to the provider.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
