-- wrk script: a batch of ten eth_blockNumber calls (ids 0..9) per request.
local calls = {}
for i = 0, 9 do
  calls[#calls + 1] = string.format('{"jsonrpc":"2.0","id":%d,"method":"eth_blockNumber","params":[]}', i)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "[" .. table.concat(calls, ",") .. "]"
