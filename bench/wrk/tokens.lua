-- A new bearer token on every request, cycling a pool of pre-minted tokens (one per line).
--   wrk ... -s bench/wrk/tokens.lua URL -- TOKENS_FILE
-- Each wrk thread starts at a different offset of the pool, so no two threads send the same
-- token at the same time; with a pool larger than the filter's token cache every request misses.

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local threads = 0
function setup(thread)
   thread:set("tid", threads)
   threads = threads + 1
end

local tokens = {}
local idx = 0

function init(args)
   local f = assert(io.open(args[1], "r"), "cannot open the token pool " .. tostring(args[1]))
   for line in f:lines() do
      if #line > 0 then tokens[#tokens + 1] = line end
   end
   f:close()
   assert(#tokens > 0, "empty token pool")
   idx = ((tid or 0) * 7919) % #tokens
end

function request()
   idx = idx % #tokens + 1
   return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[idx] })
end
