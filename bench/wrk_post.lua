-- wrk script: POSTs pre-minted bodies (one unique assertion each) and counts non-2xx answers.
-- Usage: wrk ... -s wrk_post.lua URL -- BODIES_FILE THREADS [RATE]
-- Thread i sends lines i, i+T, i+2T, ... of BODIES_FILE, so no two requests share a jti
-- unless a thread runs out and starts over (counted in "wrapped").
-- With RATE > 0 (requests/s over all threads) each thread sends on a fixed schedule, one
-- slot every THREADS/RATE s, whatever the answers' latency: a free connection takes the next
-- slot and waits for it. A slot taken after its time means every connection was busy (the
-- schedule slipped); those are counted in "late", with the worst slip in "late_max_us".

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local LATE_US = 1000 -- wrk's timers tick in milliseconds: less than that is on time
local clock = ffi.new("bench_timespec")

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

bodies = {}
cursor = 1
sent = 0
wrapped = 0
non2xx = 0
first_error = ""
pool_size = 0
late = 0
late_max_us = 0

local interval_us = 0
local next_slot = nil

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

-- wrk calls delay() before each request when the script defines it; the answer is in ms.
local function paced_delay()
  local now = now_us()
  if next_slot == nil then
    next_slot = now -- the schedule starts with the first connection, not at init
  end
  local wait = next_slot - now
  next_slot = next_slot + interval_us
  if wait < -LATE_US then
    late = late + 1
    late_max_us = math.max(late_max_us, -wait)
  end
  if wait <= 0 then
    return 0
  end
  return math.floor(wait / 1000 + 0.5)
end

function init(args)
  local path, nthreads, rate = args[1], tonumber(args[2]), tonumber(args[3] or "0")
  local line_no = 0
  for line in io.lines(path) do
    if line_no % nthreads == id and line ~= "" then
      bodies[#bodies + 1] = line
    end
    line_no = line_no + 1
  end
  if #bodies == 0 then
    error("no bodies for thread " .. id .. " in " .. path)
  end
  pool_size = #bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  if rate > 0 then
    -- wrk looks for delay() after init, so an unpaced run keeps the plain closed loop.
    interval_us = 1e6 * nthreads / rate
    delay = paced_delay
  end
end

function request()
  if cursor > #bodies then
    cursor = 1
    wrapped = wrapped + 1
  end
  local body = bodies[cursor]
  cursor = cursor + 1
  sent = sent + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_error == "" then
      first_error = status .. " " .. string.sub(body or "", 1, 300):gsub("[\r\n]", " ")
    end
  end
end

function done(summary, latency, requests)
  local total_sent, total_wrapped, total_non2xx, pool, first = 0, 0, 0, 0, ""
  local total_late, worst_late = 0, 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + t:get("sent")
    total_wrapped = total_wrapped + t:get("wrapped")
    total_non2xx = total_non2xx + t:get("non2xx")
    total_late = total_late + t:get("late")
    worst_late = math.max(worst_late, t:get("late_max_us"))
    pool = pool + t:get("pool_size")
    if first == "" then first = t:get("first_error") end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"sent\": %d, \"pool\": %d, "
      .. "\"wrapped\": %d, \"non2xx\": %d, \"connect_errors\": %d, \"read_errors\": %d, "
      .. "\"write_errors\": %d, \"timeouts\": %d, \"p50_us\": %d, \"p90_us\": %d, "
      .. "\"p99_us\": %d, \"max_us\": %d, \"late\": %d, \"late_max_us\": %d}\n",
    summary.requests, summary.duration, total_sent, pool, total_wrapped, total_non2xx,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    total_late, worst_late))
  io.write("BENCH_FIRST_ERROR " .. first .. "\n")
end
