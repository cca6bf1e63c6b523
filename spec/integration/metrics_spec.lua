-- Metrics and the admin API: the Prometheus exposition (checked by promtool and scraped by a real
-- Prometheus server), counters that survive reloads, Lua-defined metrics, GET /-/upstreams and
-- setting a server's state at run time, 405s, and token auth.
local helpers = require "helpers"
local json = require "dkjson"

local function get(port, path, headers)
  return helpers.http("GET", ("http://127.0.0.1:%d%s"):format(port, path), { headers = headers })
end

local function post(port, path, body, headers)
  return helpers.http("POST", ("http://127.0.0.1:%d%s"):format(port, path), { body = body or "", headers = headers })
end

-- The value of the first sample whose line matches the (plain) pieces, or nil.
local function sample(text, name, ...)
  local pieces = { ... }
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #name) == name and line:sub(#name + 1, #name + 1):match("[{ ]") then
      local ok = true
      for _, p in ipairs(pieces) do ok = ok and line:find(p, 1, true) ~= nil end
      if ok then return tonumber(line:match(" (%S+)$")) end
    end
  end
end

local function have(cmd) return select(2, helpers.run("command -v " .. cmd .. " >/dev/null 2>&1")) == 0 end

describe("metrics and the admin API", function()
  local origin, o2
  setup(function()
    origin = helpers.start_origin()
    o2 = helpers.start_origin()
  end)
  teardown(function() helpers.stop_all() end)

  local function start(extra)
    local port, admin = helpers.free_port(), helpers.free_port()
    local conf = ([[
local metrics = require "moonring.metrics"
local hits = metrics.counter("myapp_hits_total", "Hits seen by a filter.", { "kind" })
local work = metrics.histogram("myapp_work_seconds", "Made-up work.", {}, { 0.1, 1 })
return { workers = 2, listen = { "127.0.0.1:%d" }, admin = { listen = "127.0.0.1:%d" %s },
  shared = { cache = "1m" },
  upstreams = { api = { servers = { "127.0.0.1:%d", "127.0.0.1:%d" } } },
  routes = {
    { name = "api", path = "/api/", upstream = "api", strip_prefix = true, filters = {
      { on_request = function(req)
          if req:header("x-boom") then error("boom") end
          hits:inc(1, "request")
          work:observe(0.5)
        end } } },
    { name = "local", path = "/local", handler = function() return 200, "local\n" end },
  } }
]]):format(port, admin, extra or "", origin.port, o2.port)
    local mr = helpers.start_moonring(conf)
    assert.truthy(helpers.eventually(function() return helpers.port_open(admin) end, 5))
    return mr, port, admin
  end

  it("exposes every family in the Prometheus text format, checked by promtool", function()
    local mr, port, admin = start()
    for _ = 1, 6 do assert.equal(200, get(port, "/api/size/100").status) end
    assert.equal(200, get(port, "/local").status)
    assert.equal(404, get(port, "/nowhere").status)
    assert.equal(500, get(port, "/api/x", { ["x-boom"] = "1" }).status)
    helpers.sleep(1.2) -- connection gauges are sampled every second
    local res = get(admin, "/metrics")
    assert.equal(200, res.status)
    assert.matches("^text/plain; version=0%.0%.4", res.headers["content-type"])
    local m = res.body
    helpers.write_file(helpers.tmp .. "/last_metrics.txt", m)
    assert.equal(6, sample(m, "moonring_http_requests_total", 'route="api"', 'upstream="api"', 'code="2xx"',
      'protocol="HTTP/1.1"'))
    assert.equal(1, sample(m, "moonring_http_requests_total", 'route="local"', 'code="2xx"'))
    assert.equal(1, sample(m, "moonring_http_requests_total", 'route=""', 'code="4xx"'))
    assert.equal(1, sample(m, "moonring_http_requests_total", 'route="api"', 'upstream=""', 'code="5xx"'))
    assert.equal(600, sample(m, "moonring_http_sent_bytes_total", 'route="api"', 'upstream="api"'))
    assert.equal(6, sample(m, "moonring_http_request_duration_seconds_count", 'route="api"', 'upstream="api"'))
    assert.equal(6, sample(m, "moonring_http_upstream_response_seconds_count", 'route="api"', 'upstream="api"'))
    assert.equal(6, sample(m, "moonring_http_request_duration_seconds_bucket", 'route="api"', 'upstream="api"',
      'le="+Inf"'))
    assert.equal(6, sample(m, "moonring_upstream_server_tries_total", ('server="127.0.0.1:%d"'):format(origin.port))
      + sample(m, "moonring_upstream_server_tries_total", ('server="127.0.0.1:%d"'):format(o2.port)))
    assert.equal(1, sample(m, "moonring_upstream_server_state", ('server="127.0.0.1:%d"'):format(o2.port), 'state="up"'))
    assert.equal(1, sample(m, "moonring_lua_errors_total", 'route="api"', 'filter="filters[1]"'))
    assert.equal(0, sample(m, "moonring_lua_time_budget_kills_total", 'route="api"'))
    assert.equal(0, sample(m, "moonring_requests_in_flight"))
    assert.truthy(sample(m, "moonring_upstream_connections", 'state="idle"') >= 1)
    assert.equal(1048576, sample(m, "moonring_shared_dict_capacity_bytes", 'dict="cache"'))
    assert.equal(0, sample(m, "moonring_tls_handshakes_total", 'side="server"', 'result="full"'))
    assert.equal(1, sample(m, "moonring_config_generation"))
    assert.equal(2, sample(m, "moonring_workers"))
    -- Lua-defined metrics, summed over both workers
    assert.equal(6, sample(m, "myapp_hits_total", 'kind="request"'))
    assert.equal(6, sample(m, "myapp_work_seconds_bucket", 'le="1"'))
    assert.equal(0, sample(m, "myapp_work_seconds_bucket", 'le="0.1"'))
    assert.equal(3, sample(m, "myapp_work_seconds_sum"))
    if have("promtool") then
      local file = helpers.tmpname("metrics", ".txt")
      helpers.write_file(file, m)
      local out, rc = helpers.run("promtool check metrics < " .. file .. " 2>&1")
      assert.equal(0, rc, out)
    end
    assert.equal(0, mr.stop())
  end)

  it("keeps counters across reloads and counts reloads ok and refused", function()
    local mr, port, admin = start()
    for _ = 1, 4 do assert.equal(200, get(port, "/api/size/1").status) end
    assert.equal(200, post(admin, "/-/reload").status)
    for _ = 1, 2 do assert.equal(200, get(port, "/api/size/1").status) end
    local conf = helpers.read_file(mr.conf_path)
    helpers.write_file(mr.conf_path, "return { nonsense = true }")
    assert.equal(500, post(admin, "/-/reload").status)
    helpers.write_file(mr.conf_path, conf)
    local m = get(admin, "/metrics").body
    assert.equal(6, sample(m, "moonring_http_requests_total", 'route="api"', 'code="2xx"'))
    assert.equal(1, sample(m, "moonring_reloads_total", 'result="ok"'))
    assert.equal(1, sample(m, "moonring_reloads_total", 'result="refused"'))
    assert.equal(2, sample(m, "moonring_config_generation"))
    local g = json.decode(get(admin, "/-/generations").body)
    assert.equal(2, g.current)
    assert.equal(0, mr.stop())
  end)

  it("is scraped by a real Prometheus server", function()
    if not (have("prometheus") and have("promtool")) then
      pending("prometheus is not installed (scripts/deps installs it)")
      return
    end
    local mr, port, admin = start()
    for _ = 1, 5 do assert.equal(200, get(port, "/api/size/10").status) end
    local pport = helpers.free_port()
    local dir = helpers.tmpname("prom", "")
    helpers.run("mkdir -p " .. dir)
    helpers.write_file(dir .. "/prometheus.yml", ([[
global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: moonring
    static_configs: [ { targets: ["127.0.0.1:%d"] } ]
]]):format(admin))
    local out, rc = helpers.run("promtool check config " .. dir .. "/prometheus.yml 2>&1")
    assert.equal(0, rc, out)
    local prom = helpers.spawn(("timeout 60 prometheus --config.file=%s/prometheus.yml --storage.tsdb.path=%s/data "
      .. "--web.listen-address=127.0.0.1:%d --log.level=warn"):format(dir, dir, pport), dir .. "/prometheus.log")
    local function query(q)
      local res = get(pport, "/api/v1/query?query=" .. q:gsub("[^%w_]", function(c)
        return ("%%%02X"):format(c:byte()) end))
      if not res or res.status ~= 200 then return nil end
      local doc = json.decode(res.body)
      return doc and doc.status == "success" and doc.data.result[1] and tonumber(doc.data.result[1].value[2])
    end
    local up = helpers.eventually(function() return query('up{job="moonring"}') == 1 end, 20, 0.5)
    assert.truthy(up, prom.log())
    local v = helpers.eventually(function()
      return query('sum(moonring_http_requests_total{route="api",upstream="api",code="2xx"})')
    end, 20, 0.5)
    assert.equal(5, v)
    prom.stop()
    assert.equal(0, mr.stop())
  end)

  it("lists upstreams with server states and honours drain, down and up set at run time", function()
    local mr, port, admin = start()
    local doc = json.decode(get(admin, "/-/upstreams").body)
    assert.equal("api", doc.upstreams[1].name)
    assert.equal(2, #doc.upstreams[1].servers)
    for _, s in ipairs(doc.upstreams[1].servers) do
      assert.equal("up", s.state)
      assert.equal(1, s.weight)
    end
    local drained = ("127.0.0.1:%d"):format(o2.port)
    local res = post(admin, "/-/upstreams/api/servers/" .. drained .. "?state=draining")
    assert.equal(200, res.status, res.body)
    assert.equal("draining", json.decode(res.body).state)
    for _ = 1, 8 do
      local r = get(port, "/api/x")
      assert.equal(200, r.status)
      assert.equal(tostring(origin.port), r.headers["x-origin"])
    end
    doc = json.decode(get(admin, "/-/upstreams").body)
    assert.equal("draining", doc.upstreams[1].servers[2].state)
    -- every server out: 503
    assert.equal(200, post(admin, ("/-/upstreams/api/servers/127.0.0.1:%d"):format(origin.port), "state=down").status)
    assert.equal(503, get(port, "/api/x").status)
    assert.equal(200, post(admin, "/-/upstreams/api/servers/" .. drained, '{"state":"up"}').status)
    assert.equal(tostring(o2.port), get(port, "/api/x").headers["x-origin"])
    -- errors
    assert.equal(400, post(admin, "/-/upstreams/api/servers/" .. drained .. "?state=sleepy").status)
    assert.equal(404, post(admin, "/-/upstreams/nope/servers/" .. drained .. "?state=up").status)
    res = post(admin, "/metrics")
    assert.equal(405, res.status)
    assert.equal("GET", res.headers["allow"])
    assert.equal(405, get(admin, "/-/reload").status)
    assert.equal(404, get(admin, "/-/nothing").status)
    local routes = json.decode(get(admin, "/-/routes").body).routes
    assert.equal("api", routes[1].name)
    assert.equal("api", routes[1].upstream)
    assert.is_true(routes[2].handler)
    local workers = json.decode(get(admin, "/-/workers").body).workers
    assert.equal(2, #workers)
    assert.equal(200, post(admin, ("/-/upstreams/api/servers/127.0.0.1:%d"):format(origin.port), "state=up").status)
    assert.equal(0, mr.stop())
  end)

  it("asks for the token when one is set, masks it in /-/config, and allows other addresses with it", function()
    local token = "s3cret-token-0123456789"
    local mr, port, admin = start((', token = %q'):format(token))
    assert.equal(401, get(admin, "/metrics").status)
    assert.equal(401, get(admin, "/metrics", { Authorization = "Bearer wrong-token-0123456789" }).status)
    local res = get(admin, "/metrics", { Authorization = "Bearer " .. token })
    assert.equal(200, res.status)
    assert.equal(200, get(admin, "/-/?token=" .. token).status)
    local cfg = get(admin, "/-/config", { Authorization = "Bearer " .. token }).body
    assert.is_nil(cfg:find(token, 1, true))
    assert.matches('"token":"%*%*%*"', cfg)
    assert.equal(port, json.decode(cfg).listen[1].port)
    assert.equal(0, mr.stop())
    -- A non-loopback admin address takes a token.
    local ok, out = helpers.moonring_check(([[
return { listen = { "127.0.0.1:%d" }, admin = { listen = "0.0.0.0:%d" },
  routes = { { path = "/", handler = function() return 200 end } } }]]):format(helpers.free_port(), helpers.free_port()))
    assert.is_false(ok)
    assert.matches("admin.listen: 0.0.0.0:%d+ is not a loopback address", out)
    ok, out = helpers.moonring_check(([[
return { listen = { "127.0.0.1:%d" }, admin = { listen = "0.0.0.0:%d", token = %q },
  routes = { { path = "/", handler = function() return 200 end } } }]]):format(helpers.free_port(), helpers.free_port(), token))
    assert.is_true(ok, out)
  end)
end)
