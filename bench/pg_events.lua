-- wrk script: each request posts a distinct, pre-signed event from the file in
-- EVENTS (made by bench/pg_events.py). Thread t of T sends lines t, t+T, ...
-- Usage: EVENTS=/tmp/events.tsv wrk -t4 -c8 -d10s -s bench/pg_events.lua URL
-- As in events.lua, thread 0 waits for the last thread to load (wrk starts its
-- clock only then), so that no request counts without its time.
local threads_total = tonumber(os.getenv("WRK_THREADS") or "4")
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
  sigs, bodies, i, calls = {}, {}, 0, 0
  marker = os.getenv("EVENTS") .. ".loaded"
  if tid == 0 then os.remove(marker) end
  local n = 0
  for line in io.lines(os.getenv("EVENTS")) do
    if n % threads_total == tid then
      local tab = line:find("\t", 1, true)
      table.insert(sigs, line:sub(1, tab - 1))
      table.insert(bodies, line:sub(tab + 1))
    end
    n = n + 1
  end
  if tid == threads_total - 1 then assert(io.open(marker, "w")):close() end
end

local function wait_for_all_threads()
  while true do
    local f = io.open(marker)
    if f then f:close() return end
    os.execute("sleep 0.01")
  end
end

request = function()
  calls = calls + 1
  -- The first call of thread 0 is wrk checking the script, before the others load.
  if tid == 0 and calls == 2 then wait_for_all_threads() end
  i = i + 1
  if i > #bodies then i = 1 end -- wrapped: later requests are duplicates
  return wrk.format("POST", "/webhooks/thinkific",
    {["Content-Type"] = "application/json", ["X-Thinkific-Hmac-Sha256"] = sigs[i]}, bodies[i])
end
