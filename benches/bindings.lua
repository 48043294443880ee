-- wrk script for benches/bindings.sh: WRK_METHOD to WRK_TEMPLATE with "{}" replaced by a key
-- number drawn at random from 0..WRK_KEYS-1, with a body of WRK_BODY_BYTES bytes (0: none);
-- prints one RESULT line (the same percentiles `wrk --latency` prints).
local method = os.getenv("WRK_METHOD") or "GET"
local template = os.getenv("WRK_TEMPLATE") or "/"
local keys = tonumber(os.getenv("WRK_KEYS") or "1")
local body_bytes = tonumber(os.getenv("WRK_BODY_BYTES") or "0")
local body = nil
local headers = {}
if body_bytes > 0 then
  -- Not all one byte, so nothing along the way gets an easy ride from compression.
  local chunk = {}
  for i = 0, 255 do chunk[#chunk + 1] = string.char((i * 73 + 41) % 256) end
  chunk = table.concat(chunk)
  body = string.rep(chunk, math.ceil(body_bytes / 256)):sub(1, body_bytes)
  headers["Content-Type"] = "application/octet-stream"
end

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

-- Every request is formatted once, up front (a 1 MiB body is not copied per request).
local requests = {}

function init()
  math.randomseed(os.time() + (seed or 0))
  for i = 0, keys - 1 do
    local path = template:gsub("{}", tostring(i))
    requests[i + 1] = wrk.format(method, path, headers, body)
  end
end

function request()
  return requests[math.random(1, keys)]
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f requests=%d non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
