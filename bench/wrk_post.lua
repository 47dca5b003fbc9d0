-- wrk script: POSTs pre-minted bodies (one unique assertion each) and counts non-2xx answers.
-- Usage: wrk ... -s wrk_post.lua URL -- BODIES_FILE THREADS
-- Thread i sends lines i, i+T, i+2T, ... of BODIES_FILE, so no two requests share a jti
-- unless a thread runs out and starts over (counted in "wrapped").

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

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
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
  for _, t in ipairs(threads) do
    total_sent = total_sent + t:get("sent")
    total_wrapped = total_wrapped + t:get("wrapped")
    total_non2xx = total_non2xx + t:get("non2xx")
    pool = pool + t:get("pool_size")
    if first == "" then first = t:get("first_error") end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"sent\": %d, \"pool\": %d, "
      .. "\"wrapped\": %d, \"non2xx\": %d, \"connect_errors\": %d, \"read_errors\": %d, "
      .. "\"write_errors\": %d, \"timeouts\": %d, \"p50_us\": %d, \"p90_us\": %d, "
      .. "\"p99_us\": %d, \"max_us\": %d}\n",
    summary.requests, summary.duration, total_sent, pool, total_wrapped, total_non2xx,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  io.write("BENCH_FIRST_ERROR " .. first .. "\n")
end
