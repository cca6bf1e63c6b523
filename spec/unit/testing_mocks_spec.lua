-- moonring.testing's mocks (HTTP client, cosockets, timers, threads) and route/handler runs:
-- what a user needs to unit-test a filter that calls other services.
local testing = require "moonring.testing"
local moonring = require "moonring"

-- A filter as a user would write it: token introspection over moonring.http, with a counter in
-- a Redis-like service over moonring.tcp.
local introspect = {
  on_request = function(req, ctx)
    local tok = req:header("authorization")
    if not tok then return req:respond(401, "no token\n") end
    local res, err = moonring.http.request{ url = "http://auth.internal/introspect", method = "POST", body = tok }
    if not res then return req:respond(502, err) end
    if res.status ~= 200 then return req:respond(401, "bad token\n") end
    ctx.user = res.body
    local s = moonring.tcp()
    assert(s:connect("127.0.0.1", 6379))
    assert(s:send("INCR " .. ctx.user .. "\r\n"))
    ctx.count = tonumber((assert(s:receive()):sub(2)))
    s:setkeepalive()
  end,
}

describe("moonring.testing mocks", function()
  it("mocks moonring.http and moonring.tcp", function()
    local http = testing.mock_http(function(opts)
      if opts.body == "good" then return { status = 200, body = "alice" } end
      return { status = 403, body = "no" }
    end)
    local n = 0
    local tcp = testing.mock_tcp({ ["127.0.0.1:6379"] = function(data)
      n = n + 1
      return ":" .. n .. "\r\n"
    end })
    local r = testing.run(introspect, testing.request{ headers = { Authorization = "good" } })
    assert.is_false(r.responded)
    assert.equal("alice", r.ctx.user)
    assert.equal(1, r.ctx.count)
    r = testing.run(introspect, testing.request{ headers = { Authorization = "good" } })
    assert.equal(2, r.ctx.count)
    assert.equal("INCR alice\r\n", tcp.sent[2].data)
    assert.equal(2, #http.calls)
    assert.equal("POST", http.calls[1].method)
    r = testing.run(introspect, testing.request{ headers = { Authorization = "bad" } })
    assert.equal(401, r.status)
    http:restore()
    tcp:restore()
  end)

  it("mocks the HTTP client with a table of canned responses", function()
    local http = testing.mock_http({ ["GET http://a/x"] = { status = 204 } })
    assert.equal(204, moonring.http.request{ url = "http://a/x" }.status)
    local res, err = moonring.http.request{ url = "http://a/other" }
    assert.is_nil(res)
    assert.equal("connection refused", err)
    http:restore()
  end)

  it("runs timers on a fake schedule", function()
    local timers = testing.timers()
    local seen = {}
    moonring.timer.at(5, function(premature, tag) seen[#seen + 1] = tag .. "@" .. timers:now() end, "once")
    local h = moonring.timer.every(2, function() seen[#seen + 1] = "tick@" .. timers:now() end)
    timers:run(4)
    assert.same({ "tick@2", "tick@4" }, seen)
    timers:run(2)
    assert.same({ "tick@2", "tick@4", "once@5", "tick@6" }, seen)
    assert.is_true(h:cancel())
    assert.equal(0, timers:pending())
    timers:restore()
  end)

  it("runs light threads to their end", function()
    local t1 = moonring.thread.spawn(function(a, b) moonring.sleep(1); return a + b end, 1, 2)
    assert.same({ true, 3 }, { moonring.thread.wait(t1) })
    assert.same({ nil, "already waited or killed" }, { moonring.thread.wait(t1) })
    local bad = moonring.thread.spawn(function() error("boom", 0) end)
    assert.same({ false, "boom" }, { moonring.thread.wait(bad) })
  end)

  it("has req:args, req:cookie, set_method, set_body and res:rewrite", function()
    local req = testing.request{ path = "/x?a=1&a=2&b", headers = { Cookie = { "sid=1; x=\"q\"", "y=2" } } }
    assert.same({ a = { "1", "2" }, b = "" }, req:args())
    assert.equal("q", req:cookie("x"))
    assert.equal("2", req:cookie("y"))
    assert.is_nil(req:cookie("z"))
    req:set_method("PURGE")
    assert.equal("PURGE", req.method)
    local r = testing.run({ on_body = function(res, chunk, eof)
      return res:rewrite(chunk, eof, function(b) return b:upper() end)
    end }, testing.request(), testing.response{ body = { "ab", "cd" } })
    assert.equal("ABCD", r.body)
  end)
end)

describe("moonring.testing routes and handlers", function()
  local cfg = assert(testing.config([[
return {
  listen = { "127.0.0.1:8080" },
  upstreams = { api = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { path = "/hello", handler = function(req) return 200, "hi " .. (req:arg("name") or "you") end },
    { path = "/api/", upstream = "api", method = "GET", filters = { { "moonring.filters.request_id", {} } } },
    { path = "/", match = function(req) return req:header("x-canary") ~= nil end, upstream = "api" },
  },
}
]]))

  it("picks the route the server would", function()
    assert.equal("/hello", testing.route(cfg, testing.request{ path = "/hello" }).path)
    assert.equal("/api/", testing.route(cfg, testing.request{ path = "/api/x" }).path)
    assert.is_nil(testing.route(cfg, testing.request{ method = "POST", path = "/api/x" }))
    assert.is_nil(testing.route(cfg, testing.request{ path = "/other" }))
    assert.equal("/", testing.route(cfg, testing.request{ path = "/other", headers = { ["X-Canary"] = "1" } }).path)
  end)

  it("runs handlers and chains", function()
    local r = testing.handle(cfg, testing.request{ path = "/hello?name=bob" })
    assert.equal(200, r.status)
    assert.equal("hi bob", r.body)
    r = testing.handle(cfg, testing.request{ path = "/api/x" }, testing.response{ body = "ok" })
    assert.is_string(r.headers["x-request-id"])
    assert.equal(404, testing.handle(cfg, testing.request{ path = "/nowhere" }).status)
  end)
end)
