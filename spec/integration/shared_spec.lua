-- Shared dicts across workers, and stock filters through the real binary.
local helpers = require "helpers"

describe("shared dicts and stock filters", function()
  local origin, base

  setup(function()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    helpers.start_moonring(([[
return {
  workers = 2,
  listen = { "127.0.0.1:%d" },
  shared = { counters = "1m", limits = "1m" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/incr", handler = function(req)
        local v = assert(require("moonring").shared.counters:incr("hits", 1, 0))
        return 200, tostring(v)
      end },
    { path = "/limited", upstream = "origin", filters = {
        { "moonring.filters.rate_limit", { dict = "limits", rate = 0.5, burst = 3 } } } },
    { path = "/api", upstream = "origin", strip_prefix = true, filters = {
        { "moonring.filters.request_id", {} },
        { "moonring.filters.cors", { origins = { "https://app.example" }, max_age = 600 } },
        { "moonring.filters.headers", { request = { set = { ["X-From"] = "moonring" } },
                                        response = { set = { ["X-Served-By"] = "moonring" } } } },
      } },
    { path = "/admin", upstream = "origin", filters = {
        { "moonring.filters.ip_restriction", { deny = { "127.0.0.0/8" } } } } },
  },
}
]]):format(port, origin.port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  it("counts atomically across workers", function()
    local seen = {}
    for _ = 1, 60 do
      local res = assert(helpers.http("GET", base .. "/incr")) -- a new connection each: both workers serve
      assert.equal(200, res.status)
      local v = tonumber(res.body)
      assert.is_nil(seen[v], "duplicate value " .. tostring(v))
      seen[v] = true
    end
    for i = 1, 60 do assert.is_true(seen[i], "missing " .. i) end
  end)

  it("rate-limits with a token bucket in a shared dict", function()
    local statuses = {}
    for i = 1, 5 do statuses[i] = assert(helpers.http("GET", base .. "/limited")).status end
    assert.same({ 200, 200, 200, 429, 429 }, statuses)
  end)

  it("runs request_id, cors and headers filters in one chain", function()
    local pre = assert(helpers.http("OPTIONS", base .. "/api/x", { headers = {
      Origin = "https://app.example", ["Access-Control-Request-Method"] = "PUT" } }))
    assert.equal(204, pre.status)
    assert.equal("https://app.example", pre.headers["access-control-allow-origin"])
    local res = assert(helpers.http("GET", base .. "/api/head", { headers = { Origin = "https://app.example" } }))
    assert.equal(200, res.status)
    assert.equal("moonring", res.headers["x-served-by"])
    assert.equal("https://app.example", res.headers["access-control-allow-origin"])
    assert.matches("^%x+$", res.headers["x-request-id"])
    assert.matches("\r\nX%-From: moonring\r\n", res.body)
    assert.matches("\r\nX%-Request%-Id: " .. res.headers["x-request-id"] .. "\r\n", res.body)
  end)

  it("denies by CIDR", function()
    assert.equal(403, assert(helpers.http("GET", base .. "/admin")).status)
  end)
end)
