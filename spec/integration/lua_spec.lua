-- Lua filter chains and handlers through the real binary: phase order, request and response
-- edits, short-circuits, yielding (moonring.sleep) in every phase, error containment.
local helpers = require "helpers"
local socket = require "socket"

local function head_headers(head)
  local h = {}
  for line in head:gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
    if name then h[name:lower()] = value end
  end
  return h
end

describe("lua chains", function()
  local origin, origin2, mr, port, base

  setup(function()
    origin = helpers.start_origin()
    origin2 = helpers.start_origin()
    port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    mr = helpers.start_moonring(([[
local order = {
  on_request = function(req, ctx) ctx.trail = (ctx.trail or "") .. "A" end,
  on_response = function(res, ctx) ctx.trail = ctx.trail .. "a"; res:set_header("x-trail", ctx.trail) end,
}
local order2 = {
  on_request = function(req, ctx) ctx.trail = ctx.trail .. "B" end,
  on_response = function(res, ctx) ctx.trail = ctx.trail .. "b" end,
}
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = {
    origin = { servers = { "127.0.0.1:%d" } },
    other = { servers = { "127.0.0.1:%d" } },
  },
  routes = {
    { path = "/order", upstream = "origin", filters = { order, order2 } },
    { path = "/edit", upstream = "origin", filters = { {
        on_request = function(req, ctx)
          req:set_header("X-Added", "yes")
          req:del_header("X-Remove-Me")
          req:set_path("/head")
          req:set_query("q=1")
        end,
        on_response = function(res, ctx)
          res.status = 203
          res:set_header("X-Resp", "set")
          res:del_header("X-Origin")
        end } } },
    { path = "/deny", upstream = "origin", filters = { {
        on_request = function(req) if req:header("x-key") ~= "secret" then return req:respond(403, "denied\n") end end } } },
    { path = "/switch", upstream = "origin", filters = { {
        on_request = function(req)
          local ok, err = req:set_upstream(req:header("x-to") or "other")
          if not ok then return req:respond(400, err .. "\n") end
        end } } },
    { path = "/sleepy", upstream = "origin", strip_prefix = true, filters = { {
        on_request = function(req, ctx) require("moonring").sleep(0.2); ctx.t = "r" end,
        on_response = function(res, ctx) require("moonring").sleep(0.1); res:set_header("x-slept", ctx.t .. "s") end,
        on_body = function(res, chunk, eof, ctx)
          if eof then require("moonring").sleep(0.05); return "<end>" end
          return chunk and chunk:upper()
        end } } },
    { path = "/upper", upstream = "origin", strip_prefix = true, filters = { {
        on_body = function(res, chunk, eof) return chunk and chunk:upper() end } } },
    { path = "/boom", upstream = "origin", filters = { {
        on_request = function(req) error("boom in on_request") end } } },
    { path = "/respboom", upstream = "origin", filters = { {
        on_response = function(res) error("boom in on_response") end } } },
    { path = "/slowhandler", handler = function(req, ctx)
        require("moonring").sleep(1)
        return 200, "slept\n"
      end },
    { path = "/localresp", upstream = "origin", filters = {
        { on_response = function(res, ctx) res:set_header("x-seen", tostring(res.status)); res.status = 418 end },
        { on_request = function(req) return req:respond(403, "nope\n", { ["X-A"] = "1" }) end,
          on_body = function(res, chunk, eof) require("moonring").sleep(0.01); return chunk and chunk:upper() end },
      } },
    { path = "/log", upstream = "origin", filters = { {
        on_log = function(req, res, ctx) require("moonring").log("warn", "on_log saw", req.path, res.status) end } } },
    { path = "/", upstream = "origin" },
  },
}
]]):format(port, origin.port, origin2.port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  it("runs on_request in order and on_response in reverse order", function()
    local res = assert(helpers.http("GET", base .. "/order"))
    assert.equal(200, res.status)
    assert.equal("ABba", res.headers["x-trail"])
  end)

  it("edits request headers and target, response status and headers", function()
    local res = assert(helpers.http("GET", base .. "/edit?old=1", { headers = { ["X-Remove-Me"] = "1" } }))
    assert.equal(203, res.status)
    assert.equal("set", res.headers["x-resp"])
    assert.is_nil(res.headers["x-origin"])
    assert.matches("^GET /head%?q=1 HTTP/1%.1\r\n", res.body)
    local seen = head_headers(res.body)
    assert.equal("yes", seen["x-added"])
    assert.is_nil(seen["x-remove-me"])
  end)

  it("short-circuits with req:respond and never reaches the origin", function()
    local before = tonumber(assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count")).body)
    local res = assert(helpers.http("GET", base .. "/deny"))
    assert.equal(403, res.status)
    assert.equal("denied\n", res.body)
    local after = tonumber(assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count")).body)
    assert.equal(before, after) -- /count does not count itself
    local ok = assert(helpers.http("GET", base .. "/deny", { headers = { ["X-Key"] = "secret" } }))
    assert.equal(200, ok.status)
  end)

  it("switches upstream by name and by ip:port, and rejects unknown names", function()
    local res = assert(helpers.http("GET", base .. "/switch"))
    assert.equal(tostring(origin2.port), res.headers["x-origin"])
    res = assert(helpers.http("GET", base .. "/switch", { headers = { ["X-To"] = "127.0.0.1:" .. origin.port } }))
    assert.equal(tostring(origin.port), res.headers["x-origin"])
    -- neither a declared upstream nor a host:port (a host:port with a name is resolved: see
    -- upstream_names_spec.lua)
    res = assert(helpers.http("GET", base .. "/switch", { headers = { ["X-To"] = "nowhere" } }))
    assert.equal(400, res.status)
    assert.matches("unknown upstream", res.body)
  end)

  it("yields in on_request, on_response and on_body without blocking the worker", function()
    local t0 = socket.gettime()
    local res = assert(helpers.http("GET", base .. "/sleepy/size/5", { timeout = 5 }))
    local took = socket.gettime() - t0
    assert.equal(200, res.status)
    assert.equal("rs", res.headers["x-slept"])
    assert.equal("ABCDE<end>", res.body)
    assert.is_true(took >= 0.3, "took " .. took)
    -- two sleeping handlers on one worker overlap: ~1 s, not 2 s (the margin absorbs a loaded machine)
    t0 = socket.gettime()
    local a = helpers.spawn(("curl -sS -o /dev/null -w '%%{http_code}' %s/slowhandler"):format(base))
    local b = helpers.spawn(("curl -sS -o /dev/null -w '%%{http_code}' %s/slowhandler"):format(base))
    assert.equal(0, a.wait(5))
    assert.equal(0, b.wait(5))
    took = socket.gettime() - t0
    assert.equal("200", a.log())
    assert.equal("200", b.log())
    assert.is_true(took < 1.7, "sleeping handlers serialised the worker: " .. took)
  end)

  it("transforms a body with on_body and re-frames it", function()
    local res = assert(helpers.http("GET", base .. "/upper/size/30"))
    assert.equal(200, res.status)
    assert.equal(("abcdefghijklmnopqrstuvwxyzabcd"):upper(), res.body)
    assert.equal("chunked", res.headers["transfer-encoding"])
  end)

  it("turns a Lua error into a 500 with a traceback in the log, and keeps serving", function()
    local res = assert(helpers.http("GET", base .. "/boom"))
    assert.equal(500, res.status)
    res = assert(helpers.http("GET", base .. "/respboom"))
    assert.equal(500, res.status)
    assert.truthy(helpers.eventually(function()
      local log = mr.log()
      return log:find("boom in on_request", 1, true) and log:find("stack traceback", 1, true)
        and log:find("boom in on_response", 1, true)
    end, 3))
    -- the log line names the route, the phase and the filter
    local log = mr.log()
    assert.matches("lua: route routes%[%d+%], on_request: filter routes%[%d+%]%.filters%[1%]: [^\n]*boom in on_request", log)
    assert.matches("lua: route routes%[%d+%], on_response: filter routes%[%d+%]%.filters%[1%]: [^\n]*boom in on_response", log)
    res = assert(helpers.http("GET", base .. "/order"))
    assert.equal(200, res.status)
  end)

  it("runs on_response and on_body on a local response from on_request", function()
    local res = assert(helpers.http("GET", base .. "/localresp"))
    assert.equal(418, res.status)
    assert.equal("403", res.headers["x-seen"])
    assert.equal("1", res.headers["x-a"])
    assert.equal("NOPE\n", res.body)
    assert.equal("5", res.headers["content-length"])
  end)

  it("runs on_log after the response", function()
    local res = assert(helpers.http("GET", base .. "/log/x"))
    assert.equal(200, res.status)
    assert.truthy(helpers.eventually(function() return mr.log():find("on_log saw /log/x 200", 1, true) end, 3))
  end)
end)

describe("lua config checks", function()
  it("refuses a route whose filter module cannot be loaded, naming it", function()
    local ok, out = helpers.moonring_check([[
return { listen = { "127.0.0.1:1" }, upstreams = { o = { servers = { "127.0.0.1:2" } } },
  routes = { { path = "/", upstream = "o", filters = { "no.such.module" } } } }
]])
    assert.is_false(ok)
    assert.matches("routes%[1%]%.filters%[1%]", out)
    assert.matches("no.such.module", out, 1, true)
  end)
end)

describe("routing in Lua", function()
  local base, base2

  setup(function()
    local origin = helpers.start_origin()
    local port, port2 = helpers.free_port(), helpers.free_port()
    base, base2 = "http://127.0.0.1:" .. port, "http://127.0.0.1:" .. port2
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { headers = { ["x-tenant"] = "blue" }, handler = function(req) return 200, "blue tenant\n" end },
    { headers = { ["x-version"] = "~^v%%d+$" }, handler = function(req) return 200, "versioned\n" end },
    { pattern = "'/users/' {:id: %%d+ :} '/posts/' {:post: %%d+ :} !.", handler = function(req)
        return 200, "user " .. req.params.id .. " post " .. req.params.post .. "\n"
      end },
    { match = function(req) return req:arg("debug") == "1" end, handler = function(req) return 200, "debug\n" end },
    { path = "/", method = { "GET", "HEAD" }, upstream = "origin" },
  },
}
]]):format(port, origin.port), { wait_port = port })
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  router = function(req)
    if req.path:find("^/a") then return "alpha" end
    if req.path:find("^/b") then return 2 end
    return nil
  end,
  routes = {
    { name = "alpha", handler = function(req) return 200, "alpha\n" end },
    { name = "beta", handler = function(req) return 200, "beta\n" end },
  },
}
]]):format(port2), { wait_port = port2 })
  end)

  teardown(function() helpers.stop_all() end)

  it("matches header values exactly or by pattern", function()
    assert.equal("blue tenant\n", assert(helpers.http("GET", base .. "/x", { headers = { ["X-Tenant"] = "blue" } })).body)
    assert.equal("versioned\n", assert(helpers.http("GET", base .. "/x", { headers = { ["X-Version"] = "v12" } })).body)
    assert.matches("^ok ", assert(helpers.http("GET", base .. "/x", { headers = { ["X-Version"] = "v1x" } })).body)
  end)

  it("fills req.params from named captures of an LPeg pattern", function()
    assert.equal("user 42 post 7\n", assert(helpers.http("GET", base .. "/users/42/posts/7")).body)
    assert.matches("^ok ", assert(helpers.http("GET", base .. "/users/42/posts/7x")).body)
  end)

  it("runs match predicates and falls through to 404 when nothing matches", function()
    assert.equal("debug\n", assert(helpers.http("GET", base .. "/q?debug=1")).body)
    assert.equal(404, assert(helpers.http("POST", base .. "/q", { body = "x" })).status)
  end)

  it("lets a router function pick routes by name or index", function()
    assert.equal("alpha\n", assert(helpers.http("GET", base2 .. "/a1")).body)
    assert.equal("beta\n", assert(helpers.http("GET", base2 .. "/b1")).body)
    assert.equal(404, assert(helpers.http("GET", base2 .. "/c")).status)
  end)
end)
