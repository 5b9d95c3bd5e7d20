-- wrk script: a batch of ten eth_getBalance calls per request, each of a new address
-- (see forward.lua), so every call of every batch is forwarded.
BATCH = 10
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "forward.lua")
