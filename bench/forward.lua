-- wrk script: eth_getBalance of a new address each call, at block 1. Nothing repeats
-- (across wrk threads and across runs: each thread starts from its own random prefix),
-- so a gateway with a cache still forwards every call: the forwarding path's cost.
-- BATCH (set by forward10.lua) makes each request a batch of that many such calls.
local prefix, n = 0, 0
BATCH = BATCH or 1

function init(args)
    -- A random 64-bit prefix per thread and run, from the kernel.
    local f = io.open("/dev/urandom", "rb")
    local b = f and f:read(8) or tostring(os.time() + math.floor(os.clock() * 1e6))
    if f then f:close() end
    prefix = ""
    for i = 1, 8 do prefix = prefix .. string.format("%02x", b:byte(i) or 0) end
end

local function call(id)
    n = n + 1
    return string.format(
        '{"jsonrpc":"2.0","id":%d,"method":"eth_getBalance","params":["0x%s%024x","0x1"]}',
        id, prefix, n)
end

request = function()
    local body
    if BATCH == 1 then
        body = call(1)
    else
        local calls = {}
        for i = 1, BATCH do calls[i] = call(i - 1) end
        body = "[" .. table.concat(calls, ",") .. "]"
    end
    return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
