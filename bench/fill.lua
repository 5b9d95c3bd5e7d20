-- eth_getBalance of a new account each time, at block 1 (final, so kept for good):
-- every answer is a new cache entry. Used by run.sh to weigh one entry.
local n = 0
request = function()
    n = n + 1
    local body = string.format(
        '{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0x%040x","0x1"]}', n)
    return wrk.format("POST", nil, { ["content-type"] = "application/json" }, body)
end
