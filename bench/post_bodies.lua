-- wrk script for bench/serve.py: POST the JSON bodies of a file (one a line) in turn, then print one JSON line
-- of results. Usage: wrk -t1 -cN -dS -s bench/post_bodies.lua URL -- BODIES_FILE
local requests = {}
local counter = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  -- Formatted once here, not a request at a time: wrk shares the cores with the server it measures, so every
  -- microsecond it spends building a request is one the server does not get.
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format(nil, nil, nil, line)
  end
end

function request()
  counter = counter + 1
  return requests[counter % #requests + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect, e.read, e.write, e.timeout))
end
