-- wrk script: POSTs distinct pre-signed deliveries, rotating through a file
-- written by gen_events.py (`<signature> <body>` per line).
-- Arguments (after `--`): FILE THREADS PATH
-- Each wrk thread takes every THREADS-th line, so no two threads send the same
-- event. `done` prints one machine-readable line (WRKJSON …) for bench.py.
--
-- wrk initialises its threads one after another and starts each as soon as it
-- is initialised, but starts its clock only after the last: thread 0 would send
-- for as long as the others take to load the file (~2 s for 600k events), and
-- those requests would count without their time (~15 % too many events/s). So
-- thread 0 sends nothing before the last thread is loaded, which leaves a
-- marker file.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local file, nthreads, path = args[1], tonumber(args[2]), args[3]
   marker = file .. ".loaded"
   if tid == 0 then
      os.remove(marker)
   end
   local f = assert(io.open(file, "rb"))
   local data = f:read("*a")
   f:close()
   -- Plain concatenation: wrk.format is too slow for hundreds of thousands of requests.
   local head = "POST " .. path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
      "\r\nContent-Type: application/json\r\nX-Thinkific-Hmac-Sha256: "
   reqs = {}
   local i, start = 0, 1
   while true do
      local stop = data:find("\n", start, true)
      if not stop then break end
      if i % nthreads == tid then
         local sp = data:find(" ", start, true)
         local body = data:sub(sp + 1, stop - 1)
         reqs[#reqs + 1] = head .. data:sub(start, sp - 1) ..
            "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
      end
      i = i + 1
      start = stop + 1
   end
   data = nil
   if #reqs == 0 then
      error("no deliveries in " .. file)
   end
   pos = 0
   wrapped = 0
   calls = 0
   if tid == nthreads - 1 then
      assert(io.open(marker, "w")):close()
   end
end

local function wait_for_all_threads()
   while true do
      local f = io.open(marker)
      if f then
         f:close()
         return
      end
      os.execute("sleep 0.01")
   end
end

function request()
   calls = calls + 1
   -- Thread 0's first call is wrk checking the script, from its main thread
   -- before the other threads load; the second is its first real request.
   -- (The last thread to load never waits.)
   if tid == 0 and calls == 2 then
      wait_for_all_threads()
   end
   pos = pos + 1
   if pos > #reqs then
      -- Out of distinct events: from here on they are duplicates. Reported below.
      pos = 1
      wrapped = wrapped + 1
   end
   return reqs[pos]
end

function done(summary, latency, requests)
   local wraps = 0
   for _, t in ipairs(threads) do
      wraps = wraps + (t:get("wrapped") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"wrapped":%d}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.max, wraps))
end
