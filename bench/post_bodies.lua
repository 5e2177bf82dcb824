-- wrk script for bench/serve.py: POST the JSON bodies of a file (one a line) in turn, then print one JSON line
-- of results. Usage: wrk -t1 -cN -dS -s bench/post_bodies.lua URL -- BODIES_FILE
local bodies = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[counter % #bodies + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect, e.read, e.write, e.timeout))
end
