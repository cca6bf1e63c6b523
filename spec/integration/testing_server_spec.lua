-- moonring.testing.server, the integration kit users get: a real moonring from a config, a mock
-- upstream that records requests, a client, assert.res_status, temp dirs removed afterwards.
local server = require "moonring.testing.server"

describe("moonring.testing.server", function()
  local up, mr

  setup(function()
    up = server.mock_upstream({ status = 201, body = "from upstream", headers = { ["X-Up"] = "1" } })
    mr = server.start([[
return {
  workers = 1,
  listen = { "127.0.0.1:${port}" },
  upstreams = { up = { servers = { "127.0.0.1:${up}" } } },
  routes = {
    { path = "/hello", handler = function(req) return 200, "hi " .. (req:arg("name") or "?") end },
    { path = "/", upstream = "up", filters = { { "moonring.filters.headers", { request = { set = { ["X-Via-Test"] = "yes" } } } } } },
  },
}
]], { vars = { up = up.port } })
  end)

  teardown(function() server.stop_all() end)

  it("starts moonring from a config and talks to it", function()
    local res = assert(server.request("GET", mr.url("/hello?name=kit")))
    assert.equal("hi kit", assert.res_status(200, res))
  end)

  it("records what reaches the mock upstream", function()
    up.reset()
    local res = assert(server.request("POST", mr.url("/things?a=1"), { body = "payload", headers = { ["X-Mine"] = "m" } }))
    assert.equal("from upstream", server.res_status(res, 201))
    assert.equal("1", res.headers["x-up"])
    local reqs = up.requests()
    assert.equal(1, #reqs)
    assert.equal("POST", reqs[1].method)
    assert.equal("/things", reqs[1].path)
    assert.equal("a=1", reqs[1].query)
    assert.equal("payload", reqs[1].body)
    assert.equal("yes", reqs[1].headers["x-via-test"])
    assert.equal("m", reqs[1].headers["x-mine"])
  end)

  it("says what went wrong when a status differs", function()
    local res = assert(server.request("GET", mr.url("/hello")))
    local ok, err = pcall(server.res_status, res, 404)
    assert.is_false(ok)
    assert.matches("expected status 404, got 200; body:\nhi ?", err, 1, true)
  end)

  it("starts from a data-only table and cleans up its directory", function()
    local inst = server.start({ workers = 1, routes = { { path = "/", upstream = "127.0.0.1:" .. up.port } } })
    assert.equal("from upstream", server.res_status(assert(server.request("GET", inst.url("/t"))), 201))
    local dir = inst.dir
    assert.is_not_nil(io.open(dir .. "/moonring.lua", "rb"))
    server.stop_all()
    assert.is_nil(io.open(dir .. "/moonring.lua", "rb"))
    up = server.mock_upstream({ body = "again" }) -- for any test after this one
  end)
end)
