-- wrk script for benches/scale.sh: WRK_METHOD to WRK_TEMPLATE with "{}" replaced by an object
-- number drawn at random from 1..WRK_OBJECTS; prints one RESULT line.
local method = os.getenv("WRK_METHOD") or "GET"
local template = os.getenv("WRK_TEMPLATE") or "/hello"
local objects = tonumber(os.getenv("WRK_OBJECTS") or "1")

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init()
  math.randomseed(os.time() + (seed or 0))
end

function request()
  local path = template:gsub("{}", tostring(math.random(1, objects)))
  return wrk.format(method, path)
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.status + e.connect + e.read + e.write + e.timeout))
end
