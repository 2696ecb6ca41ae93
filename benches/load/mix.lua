-- The registry request mix of the load harness (benches/load/run), for wrk:
--
--   wrk -t1 -c50 -d15s --latency -s mix.lua http://127.0.0.1:PORT/ -- ADDRESSES HOST EMBARGO [SEED]
--
-- ADDRESSES: the file load_mmdb writes (`address country` per line); each request carries one of
-- them in X-Forwarded-For, so clients come from all over the IPv4 space (a few percent from
-- embargoed countries: 451 through the proxies). HOST: the Host header (the public login host
-- with the proxy's port, or the origin's login host when the origin is measured directly).
-- EMBARGO: the embargoed country codes, comma-separated.
--
-- wrk 4.1 does not know which request a response answers, so it reads the body a HEAD
-- response's Content-Length announces, and waits for it forever. Hence HEAD requests carry
-- addresses outside the embargo (a 451 to a HEAD announces its JSON body's length), and the
-- origin answers HEAD manifests with Content-Length: 0.
--
-- Per request, drawn in advance (8,192 requests, then repeated in order):
--   25 %  HEAD /v2/<repo>/manifests/<tag>   200, Docker-Content-Digest  (pull: resolve the tag)
--   20 %  GET  /v2/<repo>/manifests/<ref>   200, ~1.5 KB manifest
--   30 %  GET  /v2/<repo>/blobs/sha256:...  307 to the data host (Location rewritten)
--   15 %  GET  /v2/                         401 with the realm (rewritten)
--   10 %  GET  /oauth2/token?scope=...      200, token JSON
--
-- done() prints one line `MIX {json}` with requests, duration, errors, latency percentiles (µs)
-- and the count of each status, for harness.py.

local requests = {}
local cursor = 0
statuses = {}

local repos = {
  "library/nginx", "library/redis", "library/postgres", "library/python", "library/node",
  "library/alpine", "library/debian", "library/golang", "products/api", "products/web",
  "products/worker", "products/billing", "tools/cli", "tools/ci-runner", "ml/trainer",
  "ml/inference", "data/etl", "data/spark", "infra/agent", "infra/proxy",
}
local tags = { "latest", "1.0.0", "1.2.3", "2024.10", "stable", "v3" }
local user_agent = "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/27.3.1 \\(linux\\))"
local manifest_accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
local bearer = "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJBenVyZSBDb250YWluZXIgUmVnaXN0cnkiLCJhdWQiOiJjb250b3NvYWNyLmF6dXJlY3IuaW8iLCJhY2Nlc3MiOlt7InR5cGUiOiJyZXBvc2l0b3J5IiwiYWN0aW9ucyI6WyJwdWxsIl19XX0.c2lnbmF0dXJl"

local function hex64()
  local t = {}
  for i = 1, 8 do
    t[i] = string.format("%08x", math.random(0, 0x7fffffff) * 2 + math.random(0, 1))
  end
  return table.concat(t)
end

function init(args)
  local path, host, embargo, seed = args[1], args[2], args[3] or "", tonumber(args[4] or "1")
  local embargoed = {}
  for code in embargo:gmatch("%a%a") do
    embargoed[code] = true
  end
  local addresses, allowed = {}, {}
  for line in io.lines(path) do
    local address, country = line:match("^(%S+)%s+(%S+)")
    if address then
      addresses[#addresses + 1] = address
      if not embargoed[country] then
        allowed[#allowed + 1] = address
      end
    end
  end
  math.randomseed(seed)
  local digests = {}
  for i = 1, 64 do
    digests[i] = "sha256:" .. hex64()
  end
  for i = 1, 8192 do
    local r = math.random(100)
    local repo = repos[math.random(#repos)]
    local headers = {
      ["Host"] = host,
      ["User-Agent"] = user_agent,
      ["X-Forwarded-For"] = addresses[math.random(#addresses)],
    }
    local method, target = "GET", nil
    if r <= 45 then
      headers["Accept"] = manifest_accept
      headers["Authorization"] = bearer
      if r <= 25 then
        method = "HEAD"
        headers["X-Forwarded-For"] = allowed[math.random(#allowed)]
        target = "/v2/" .. repo .. "/manifests/" .. tags[math.random(#tags)]
      else
        target = "/v2/" .. repo .. "/manifests/" .. digests[math.random(#digests)]
      end
    elseif r <= 75 then
      headers["Authorization"] = bearer
      target = "/v2/" .. repo .. "/blobs/" .. digests[math.random(#digests)]
    elseif r <= 90 then
      target = "/v2/"
    else
      target = "/oauth2/token?scope=repository%3A" .. repo:gsub("/", "%%2F") .. "%3Apull&service=contosoacr.azurecr.io"
    end
    requests[i] = wrk.format(method, target, headers)
  end
end

function request()
  cursor = cursor % #requests + 1
  return requests[cursor]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, n in pairs(s) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d":%d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'MIX {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), table.concat(parts, ",")))
end
