-- wrk script: a batch of ten eth_getBalance calls at block 1 (ids 0..9) per request.
local calls = {}
for i = 0, 9 do
  calls[#calls + 1] = string.format('{"jsonrpc":"2.0","id":%d,"method":"eth_getBalance","params":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","0x1"]}', i)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "[" .. table.concat(calls, ",") .. "]"
