-- The filter test kit (moonring.testing) and the stock filters (moonring.filters.*), in plain
-- LuaJIT: no server.
local testing = require "moonring.testing"
local util = require "moonring.filters._util"

local request, response, run, run_chain = testing.request, testing.response, testing.run, testing.run_chain

local function load_error(entry)
  local ok, err = pcall(testing.load, entry)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function decode_json(s) -- enough JSON to read our own flat log lines back
  local lua = s:gsub('"([%w_]+)":', '["%1"]='):gsub("null", "nil")
  return assert(loadstring("return " .. lua))()
end

describe("moonring.testing", function()
  local clock
  before_each(function() clock = testing.clock(1000) end)
  after_each(function() clock:restore() end)

  describe("request", function()
    it("has defaults", function()
      local req = request()
      assert.same({ "GET", "/", "", "localhost", "http", "127.0.0.1" },
        { req.method, req.path, req.query, req.host, req.scheme, req.remote_addr })
      assert.same({}, req.params)
      assert.equal("", req:body())
      assert.equal("localhost", req:header("Host"))
    end)

    it("splits a query from the path and derives host from the Host header", function()
      local req = request{ method = "post", path = "/a/b?x=1&y=2", headers = { Host = "example.com:8080" } }
      assert.equal("POST", req.method)
      assert.equal("/a/b", req.path)
      assert.equal("x=1&y=2", req.query)
      assert.equal("example.com", req.host)
    end)

    it("treats header names case-insensitively; header() is the first value, headers() joins", function()
      local req = request{ headers = { ["X-Thing"] = { "a", "b" }, accept = "text/html" } }
      assert.equal("a", req:header("x-thing"))
      assert.equal("a, b", req:headers()["x-thing"])
      assert.equal("text/html", req:header("ACCEPT"))
      req:set_header("X-THING", "c")
      assert.equal("c", req:headers()["x-thing"])
      req:add_header("x-thing", "d")
      assert.equal("c, d", req:headers()["x-thing"])
      req:del_header("X-Thing")
      assert.is_nil(req:header("x-thing"))
      req:set_header("X-Num", 42)
      assert.equal("42", req:header("x-num"))
    end)

    it("raises clear errors on misuse", function()
      local req = request()
      assert.has_error(function() req:header(1) end, "header(name): name must be a header name string, got number 1")
      assert.has_error(function() req:set_header("X", nil) end,
        "set_header(name, value): value must be a string, a number or a list of strings, got nil")
      assert.has_error(function() req:set_header("X", "a\r\nb") end,
        "set_header(name, value): value must not contain CR, LF or NUL")
      assert.has_error(function() req:set_header("bad name", "v") end)
      assert.has_error(function() req:set_path("relative") end)
      assert.has_error(function() req:set_path("/a?b") end)
      assert.has_error(function() req:set_upstream(7) end)
      assert.has_error(function() req:respond("200") end)
      assert.has_error(function() request{ path = "nope" } end, "testing.request: path must start with '/'")
    end)

    it("decodes args", function()
      local req = request{ path = "/?a=1&b=hello+world&c=%2Fx&flag" }
      assert.equal("1", req:arg("a"))
      assert.equal("hello world", req:arg("b"))
      assert.equal("/x", req:arg("c"))
      assert.equal("", req:arg("flag"))
      assert.is_nil(req:arg("zzz"))
    end)

    it("rewrites path and query", function()
      local req = request{ path = "/a?x=1" }
      req:set_path("/b")
      req:set_query({ q = "a b", z = 1 })
      assert.equal("/b", req.path)
      assert.equal("q=a%20b&z=1", req.query)
      req:set_query("?k=v")
      assert.equal("k=v", req.query)
    end)

    it("records respond() once and set_upstream()", function()
      local req = request{ body = "payload" }
      assert.equal("payload", req:body())
      req:set_upstream("127.0.0.1:9000")
      assert.equal("127.0.0.1:9000", req.upstream)
      assert.is_true(req:respond(418, "teapot", { ["X-A"] = "1" }))
      assert.same({ status = 418, body = "teapot", headers = { ["X-A"] = "1" } }, req.response)
      assert.same({ nil, "response already sent" }, { req:respond(200) })
    end)
  end)

  describe("response", function()
    it("has status and header methods", function()
      local res = response{ status = 404, headers = { ["Content-Type"] = "text/plain" } }
      assert.equal(404, res.status)
      assert.equal("text/plain", res:header("content-type"))
      res.status = 200
      res:set_header("X-A", "1"); res:add_header("x-a", "2"); res:del_header("content-type")
      assert.same({ ["x-a"] = "1, 2" }, res:headers())
      assert.has_error(function() response{ body = 5 } end)
    end)
  end)

  describe("run", function()
    local function recorder(name, log)
      return {
        on_request = function(_, ctx) log[#log + 1] = name .. ".req"; ctx[name] = true end,
        on_response = function(res) log[#log + 1] = name .. ".res"; res:add_header("X-Order", name) end,
        on_body = function(_, chunk, eof) log[#log + 1] = name .. ".body" .. (eof and "!" or ""); return chunk .. name end,
        on_log = function() log[#log + 1] = name .. ".log" end,
      }
    end

    it("runs the phases in the core's order", function()
      local log = {}
      local r = run_chain({ recorder("a", log), recorder("b", log) }, request(), response{ body = "x" })
      assert.same({ "a.req", "b.req", "b.res", "a.res", "a.body!", "b.body!", "a.log", "b.log" }, log)
      assert.equal("xab", r.body)
      assert.equal("b, a", r.headers["x-order"])
      assert.is_true(r.ctx.a and r.ctx.b)
      assert.is_false(r.responded)
    end)

    it("short-circuits on respond() and sends the local response through the chain", function()
      local log = {}
      local stop = { on_request = function(req) log[#log + 1] = "stop.req"; req:respond(403, "no", { ["X-Why"] = "stop" }) end }
      local r = run_chain({ recorder("a", log), stop, recorder("b", log) }, request(), response{ body = "upstream" })
      assert.same({ "a.req", "stop.req", "b.res", "a.res", "a.body!", "b.body!", "a.log", "b.log" }, log)
      assert.is_true(r.responded)
      assert.equal(403, r.status)
      assert.equal("noab", r.body)
      assert.equal("stop", r.headers["x-why"])
    end)

    it("stops after on_request when there is no response", function()
      local log = {}
      local r = run(recorder("a", log), request())
      assert.same({ "a.req" }, log)
      assert.is_nil(r.status)
      assert.is_nil(r.res)
    end)

    it("feeds body chunks, honours chunk_size and dropped chunks", function()
      local seen = {}
      local f = { on_body = function(_, chunk, eof)
        seen[#seen + 1] = chunk .. (eof and "|eof" or "")
        if chunk == "b" then return nil end
        return chunk:upper()
      end }
      local r = run(f, request(), response{ body = "abc" }, { chunk_size = 1 })
      assert.same({ "a", "b", "c|eof" }, seen)
      assert.equal("AC", r.body)
      seen = {}
      r = run(f, request(), response{ body = { "xy", "z" } })
      assert.same({ "xy", "z|eof" }, seen)
      assert.equal("XYZ", r.body)
    end)

    it("runs phases in coroutines: moonring.sleep advances the test clock, yields resume", function()
      local moonring = require "moonring"
      local f = { on_request = function(_, ctx)
        local t0 = moonring.now()
        moonring.sleep(2.5)
        coroutine.yield()
        ctx.slept = moonring.now() - t0
      end }
      local r = run(f, request())
      assert.equal(2.5, r.ctx.slept)
    end)

    it("uses a given ctx", function()
      local ctx = { preset = 1 }
      local r = run({ on_request = function(_, c) c.seen = c.preset end }, request(), nil, { ctx = ctx })
      assert.equal(ctx, r.ctx)
      assert.equal(1, ctx.seen)
    end)

    it("loads module names, { module, options } and factories", function()
      local r = run({ "moonring.filters.respond", { status = 201, body = "made" } }, request())
      assert.same({ true, 201, "made" }, { r.responded, r.status, r.body })
      r = run("moonring.filters.request_id", request())
      assert.is_string(r.ctx.request_id)
      r = run(function(opts) assert.is_nil(opts); return { on_request = function(req) req:respond(204) end } end, request())
      assert.equal(204, r.status)
      r = run({ function(opts) return { on_request = function(req) req:respond(opts.s) end } end, { s = 202 } }, request())
      assert.equal(202, r.status)
    end)

    it("rejects bad filters clearly", function()
      assert.matches("unknown phase 'on_reqest'", load_error({ on_reqest = function() end }))
      assert.matches("on_log must be a function", load_error({ on_log = true }))
      package.loaded["spec_plain_filter"] = { on_request = function() end }
      assert.matches("takes no options", load_error({ "spec_plain_filter", { x = 1 } }))
      package.loaded["spec_plain_filter"] = nil
      local ok, err = pcall(run, { on_request = function() error("boom") end }, request())
      assert.is_false(ok)
      assert.matches("on_request of filter #1 failed: .*boom", err)
      assert.has_error(function() run({}, {}) end, "testing.run: req must come from testing.request{}")
    end)
  end)

  describe("shared_dict", function()
    it("implements get/set/add/replace/delete with ttl on the test clock", function()
      local d = testing.shared_dict()
      assert.same({ true, nil, false }, { d:set("a", 1, 10) })
      assert.equal(1, d:get("a"))
      assert.equal(10, d:ttl("a"))
      clock:advance(4)
      assert.equal(6, d:ttl("a"))
      assert.same({ false, "exists", false }, { d:add("a", 2) })
      assert.same({ false, "not found", false }, { d:replace("b", 2) })
      clock:advance(6)
      assert.is_nil(d:get("a"))
      assert.same({ 1, nil, true }, { d:get_stale("a") })
      assert.same({ nil, "not found" }, { d:ttl("a") })
      assert.is_true((d:add("a", 3)))
      assert.equal(0, d:ttl("a"))
      d:set("s", "str", 0, 7)
      assert.same({ "str", 7 }, { d:get("s") })
      d:delete("s")
      assert.is_nil(d:get("s"))
      assert.same({ false, "bad value type", false }, { d:set("t", {}) })
      assert.same({ nil, "nil key" }, { d:get(nil) })
      assert.same({ nil, "empty key" }, { d:get("") })
      assert.has_error(function() d.get("x") end, "shared dict methods must be called with ':'")
    end)

    it("implements incr with init and init_ttl", function()
      local d = testing.shared_dict()
      assert.same({ nil, "not found" }, { d:incr("n", 1) })
      assert.equal(6, d:incr("n", 1, 5, 2))
      assert.equal(8, d:incr("n", 2))
      assert.equal(2, d:ttl("n"))
      clock:advance(2)
      assert.equal(1, d:incr("n", 1, 0))
      assert.equal(0, d:ttl("n"))
      d:set("s", "x")
      assert.same({ nil, "not a number" }, { d:incr("s", 1) })
      assert.has_error(function() d:incr("n", "1") end)
    end)

    it("implements expire, flush_all, flush_expired and get_keys", function()
      local d = testing.shared_dict()
      d:set("a", 1); d:set("b", 2); d:set("c", 3, 1)
      assert.is_true(d:expire("a", 5))
      assert.equal(5, d:ttl("a"))
      assert.same({ nil, "not found" }, { d:expire("zz", 1) })
      assert.same({ "a", "b", "c" }, d:get_keys())
      clock:advance(1)
      assert.same({ "a", "b" }, d:get_keys(0))
      assert.equal(1, d:flush_expired())
      d:flush_all()
      assert.same({}, d:get_keys())
    end)

    it("takes an injected clock and registers named dicts in moonring.shared", function()
      local t = 0
      local d = testing.shared_dict{ name = "spec_dict", clock = function() return t end }
      d:set("k", true, 1)
      t = 0.5
      assert.is_true(d:get("k"))
      t = 1
      assert.is_nil(d:get("k"))
      assert.equal(d, require("moonring").shared.spec_dict)
      assert.equal(d, util.shared_dict("spec_dict"))
    end)
  end)

  describe("clock", function()
    it("controls moonring.now and restores it", function()
      local moonring = require "moonring"
      local c = testing.clock(50)
      assert.equal(50, moonring.now())
      c:advance(1.5)
      assert.equal(51.5, moonring.now())
      c:set(7)
      assert.equal(7, util.now())
      c:restore()
      assert.equal(1000, moonring.now()) -- the outer clock again
      assert.has_error(function() testing.clock("x") end, "testing.clock(t): t must be a number")
    end)
  end)
end)

describe("stock filters", function()
  local clock
  before_each(function() clock = testing.clock(1700000000) end)
  after_each(function() clock:restore() end)

  it("reject unknown options with a suggestion and non-table options", function()
    assert.equal("moonring.filters.cors: unknown option 'origin' (did you mean 'origins'?)",
      load_error({ "moonring.filters.cors", { origin = "*" } }))
    assert.equal("moonring.filters.respond: options must be a table, got \"x\"",
      load_error({ "moonring.filters.respond", "x" }))
  end)

  describe("request_id", function()
    local F = "moonring.filters.request_id"

    it("generates a 128-bit hex id, sets it upstream, echoes it and exposes ctx.request_id", function()
      local req = request()
      local r = run(F, req, response())
      local id = r.ctx.request_id
      assert.matches("^%x+$", id)
      assert.equal(32, #id)
      assert.equal(id, req:header("x-request-id"))
      assert.equal(id, r.headers["x-request-id"])
      local ids = {}
      for _ = 1, 200 do ids[run(F, request()).ctx.request_id] = true end
      local n = 0
      for _ in pairs(ids) do n = n + 1 end
      assert.equal(200, n)
    end)

    it("keeps an incoming id unless always = true, and replaces malformed ones", function()
      local r = run(F, request{ headers = { ["X-Request-Id"] = "abc-123" } }, response())
      assert.equal("abc-123", r.ctx.request_id)
      assert.equal("abc-123", r.headers["x-request-id"])
      r = run({ F, { always = true } }, request{ headers = { ["X-Request-Id"] = "abc-123" } })
      assert.are_not.equal("abc-123", r.ctx.request_id)
      r = run(F, request{ headers = { ["X-Request-Id"] = "has space" } })
      assert.are_not.equal("has space", r.ctx.request_id)
      r = run(F, request{ headers = { ["X-Request-Id"] = ("x"):rep(201) } })
      assert.equal(32, #r.ctx.request_id)
    end)

    it("takes a header name, echo = false and a generator", function()
      local n = 0
      local req = request()
      local r = run({ F, { header = "X-Trace", echo = false, generator = function() n = n + 1; return "id" .. n end } },
        req, response())
      assert.equal("id1", req:header("x-trace"))
      assert.is_nil(r.headers["x-trace"])
      assert.is_nil(req:header("x-request-id"))
    end)

    it("validates options", function()
      assert.matches("option 'header' must be a valid header name", load_error({ F, { header = "bad header" } }))
      assert.matches("option 'always' must be a boolean", load_error({ F, { always = "yes" } }))
      assert.matches("option 'generator' must be a function", load_error({ F, { generator = 1 } }))
    end)
  end)

  describe("headers", function()
    local F = "moonring.filters.headers"

    it("removes, sets and adds request and response headers", function()
      local req = request{ headers = { Cookie = "c=1", ["X-Env"] = "dev", Via = "1.1 a" } }
      local r = run({ F, {
        request = { remove = { "cookie" }, set = { ["X-Env"] = "prod", ["X-N"] = 5 }, add = { Via = { "1.1 b", "1.1 c" } } },
        response = { remove = "Server", set = { ["Cache-Control"] = "no-store" }, add = { ["X-Extra"] = "1" } },
      } }, req, response{ headers = { Server = "origin", ["X-Extra"] = "0" } })
      assert.is_nil(req:header("cookie"))
      assert.equal("prod", req:header("x-env"))
      assert.equal("5", req:header("x-n"))
      assert.equal("1.1 a, 1.1 b, 1.1 c", req:headers()["via"])
      assert.is_nil(r.headers.server)
      assert.equal("no-store", r.headers["cache-control"])
      assert.equal("0, 1", r.headers["x-extra"])
    end)

    it("only defines the phases it needs", function()
      local f = testing.load({ F, { response = { set = { A = "1" } } } })
      assert.is_nil(f.on_request)
      assert.is_function(f.on_response)
      assert.same({}, testing.load(F))
    end)

    it("validates options", function()
      assert.matches("option 'request' must be a table", load_error({ F, { request = "x" } }))
      assert.matches("unknown option 'sett'", load_error({ F, { request = { sett = {} } } }))
      assert.matches("option 'request.set.bad name' must be a valid header name",
        load_error({ F, { request = { set = { ["bad name"] = "v" } } } }))
      assert.matches("option 'response.set.X' must be a header value",
        load_error({ F, { response = { set = { X = "a\nb" } } } }))
      assert.matches("option 'response.set.X' must be a header value",
        load_error({ F, { response = { set = { X = { "a" } } } } }))
      assert.matches("option 'request.remove%[1%]' must be a string",
        load_error({ F, { request = { remove = { 1 } } } }))
    end)
  end)

  describe("redirect", function()
    local F = "moonring.filters.redirect"

    it("substitutes $path, $query, $host, $scheme, $is_args, $request_uri and ${name}", function()
      local req = request{ path = "/a/b?x=1", headers = { Host = "old.example.com" } }
      local r = run({ F, { to = "https://new.example.com${path}/?q=$query&h=$host&s=$scheme&$$5" } }, req)
      assert.same({ true, 302 }, { r.responded, r.status })
      assert.equal("https://new.example.com/a/b/?q=x=1&h=old.example.com&s=http&$5", r.headers.location)
      r = run({ F, { to = "https://n$request_uri", status = 301 } }, request{ path = "/p?a=b" })
      assert.equal(301, r.status)
      assert.equal("https://n/p?a=b", r.headers.location)
      r = run({ F, { to = "https://n$path$is_args$query" } }, request{ path = "/p" })
      assert.equal("https://n/p", r.headers.location)
    end)

    it("with https = true redirects only plain-http requests, to the same host and URI", function()
      local r = run({ F, { https = true, status = 308 } }, request{ path = "/x?y=1", host = "h.example" })
      assert.equal(308, r.status)
      assert.equal("https://h.example/x?y=1", r.headers.location)
      r = run({ F, { https = true } }, request{ scheme = "https" })
      assert.is_false(r.responded)
    end)

    it("validates options", function()
      assert.matches("option 'to' must be a string, got nil", load_error({ F, {} }))
      assert.matches("option 'to' has unknown variable %$uri", load_error({ F, { to = "/$uri" } }))
      assert.matches("option 'status' must be one of 301, 302, 303, 307, 308, got 200",
        load_error({ F, { to = "/", status = 200 } }))
      assert.matches("option 'to' must not contain CR", load_error({ F, { to = "/\r\nX: y" } }))
    end)
  end)

  describe("rewrite", function()
    local F = "moonring.filters.rewrite"

    it("rewrites with Lua pattern captures and keeps the query", function()
      local req = request{ path = "/old/a/b?x=1" }
      local r = run({ F, { from = "^/old/(%w+)/(.*)$", to = "/new/%2/%1" } }, req)
      assert.is_false(r.responded)
      assert.equal("/new/b/a", req.path)
      assert.equal("x=1", req.query)
    end)

    it("replaces only the first match, %0 is the whole match, and no match leaves the path", function()
      local req = request{ path = "/v1/v1/x" }
      run({ F, { from = "v1", to = "[%0]" } }, req)
      assert.equal("/[v1]/v1/x", req.path)
      req = request{ path = "/other" }
      run({ F, { from = "^/old", to = "/new" } }, req)
      assert.equal("/other", req.path)
    end)

    it("moves a query from `to` into the query string and merges or drops the original", function()
      local req = request{ path = "/item/42?lang=en" }
      run({ F, { from = "^/item/(%d+)$", to = "/item.php?id=%1" } }, req)
      assert.same({ "/item.php", "id=42&lang=en" }, { req.path, req.query })
      req = request{ path = "/item/42?lang=en" }
      run({ F, { from = "^/item/(%d+)$", to = "/item.php?id=%1", query = false } }, req)
      assert.same({ "/item.php", "id=42" }, { req.path, req.query })
      req = request{ path = "/a?lang=en" }
      run({ F, { from = "^/a", to = "/b", query = false } }, req)
      assert.same({ "/b", "" }, { req.path, req.query })
      req = request{ path = "/api" }
      run({ F, { from = "^/api", to = "" } }, req)
      assert.equal("/", req.path)
    end)

    it("takes a function replacement", function()
      local req = request{ path = "/USERS/Bob" }
      run({ F, { from = "^/(%a+)", to = function(s) return "/" .. s:lower() end } }, req)
      assert.equal("/users/Bob", req.path)
    end)

    it("supports LPeg re patterns", function()
      local req = request{ path = "/v2/users?x=1" }
      run({ F, { re = "'/v' {%d+} '/'", to = "/api/%1/" } }, req)
      assert.same({ "/api/2/users", "x=1" }, { req.path, req.query })
      req = request{ path = "/nothing" }
      run({ F, { re = "'/v' {%d+}", to = "/x" } }, req)
      assert.equal("/nothing", req.path)
    end)

    it("validates options", function()
      assert.matches("option 'from' %(or 're'%) is required", load_error({ F, { to = "/" } }))
      assert.matches("option 'from' %(or 're'%) is required", load_error({ F, { from = "a", re = "'a'", to = "/" } }))
      assert.matches("option 'to' must be a string or a function", load_error({ F, { from = "a" } }))
      assert.matches("option 'from' is not a valid Lua pattern", load_error({ F, { from = "/(a", to = "/" } }))
      assert.matches("option 'to' refers to capture %%3 but 'from' has 2",
        load_error({ F, { from = "^/(a)/(b)", to = "/%3" } }))
      assert.matches("option 'to' refers to capture %%2 but 'from' has 1",
        load_error({ F, { from = "^/([%(])%(", to = "/%2" } }))
      assert.matches("option 'to' has an invalid use of '%%'", load_error({ F, { from = "a", to = "/%x" } }))
      assert.matches("option 're' is not a valid re pattern", load_error({ F, { re = "'unterminated", to = "/" } }))
      assert.matches("option 'query' must be a boolean", load_error({ F, { from = "a", to = "/", query = 1 } }))
    end)
  end)

  describe("basic_auth", function()
    local F = "moonring.filters.basic_auth"
    local b64 = { ["alice:secret"] = "YWxpY2U6c2VjcmV0", ["bob:hunter2"] = "Ym9iOmh1bnRlcjI=",
      ["alice:wrong"] = "YWxpY2U6d3Jvbmc=", ["eve:secret"] = "ZXZlOnNlY3JldA==", ["nocolon"] = "bm9jb2xvbg==" }
    local opts = { users = { alice = "secret",
      bob = "{SHA256}F52FBD32B2B3B86FF88EF6C490628285F482AF15DDCB29541F94BCF526A3F6C7" }, realm = "staff" }

    local function auth(value, o)
      local req = request{ headers = value and { Authorization = value } or nil }
      return run({ F, o or opts }, req), req
    end

    it("accepts plain and {SHA256} passwords, sets ctx.user and strips Authorization", function()
      local r, req = auth("Basic " .. b64["alice:secret"])
      assert.is_false(r.responded)
      assert.equal("alice", r.ctx.user)
      assert.is_nil(req:header("authorization"))
      r, req = auth("basic   " .. b64["bob:hunter2"] .. " ")
      assert.is_false(r.responded)
      assert.equal("bob", r.ctx.user)
      assert.is_nil(req:header("authorization"))
    end)

    it("keeps Authorization with keep = true and sets user_header", function()
      local r, req = auth("Basic " .. b64["alice:secret"], { users = opts.users, keep = true, user_header = "X-User" })
      assert.is_false(r.responded)
      assert.equal("Basic " .. b64["alice:secret"], req:header("authorization"))
      assert.equal("alice", req:header("x-user"))
    end)

    it("answers 401 with WWW-Authenticate for missing, wrong, unknown or malformed credentials", function()
      for _, value in ipairs({ false, "Basic " .. b64["alice:wrong"], "Basic " .. b64["eve:secret"],
        "Bearer " .. b64["alice:secret"], "Basic " .. b64["nocolon"], "Basic", "Basic !!!!", "Basic YWxpY2U6c2VjcmV0=",
        "Basic YWxpY2U6c2VjcmV", "Basic YW=xpY2U6c2VjcmV0" }) do
        local r = auth(value or nil)
        assert.is_true(r.responded, tostring(value))
        assert.equal(401, r.status)
        assert.equal('Basic realm="staff", charset="UTF-8"', r.headers["www-authenticate"])
        assert.is_nil(r.ctx.user)
      end
    end)

    it("validates options", function()
      assert.matches("option 'users' is required", load_error({ F, {} }))
      assert.matches("option 'users' must not be empty", load_error({ F, { users = {} } }))
      assert.matches("option 'users.a:b' is not a valid user name", load_error({ F, { users = { ["a:b"] = "x" } } }))
      assert.matches("option 'users.a' must be a password string", load_error({ F, { users = { a = 1 } } }))
      assert.matches("option 'users.a' must be {SHA256} followed by 64 hex digits",
        load_error({ F, { users = { a = "{SHA256}abc" } } }))
      assert.matches("option 'realm' must not contain quotes", load_error({ F, { users = { a = "b" }, realm = 'x"y' } }))
      assert.matches("option 'keep' must be a boolean", load_error({ F, { users = { a = "b" }, keep = "no" } }))
    end)
  end)

  describe("rate_limit", function()
    local F = "moonring.filters.rate_limit"
    local dict
    before_each(function() dict = testing.shared_dict("limits") end)

    local function hit(filter, addr, headers)
      return run(filter, request{ remote_addr = addr or "10.0.0.1", headers = headers }, response())
    end

    it("allows a burst, then answers 429 with Retry-After and X-RateLimit headers", function()
      local f = testing.load({ F, { dict = "limits", rate = 1, burst = 3 } })
      for i = 1, 3 do
        local r = hit(f)
        assert.equal(200, r.status)
        assert.equal("3", r.headers["x-ratelimit-limit"])
        assert.equal(tostring(3 - i), r.headers["x-ratelimit-remaining"])
      end
      local r = hit(f)
      assert.equal(429, r.status)
      assert.is_true(r.responded)
      assert.equal("1", r.headers["retry-after"])
      assert.equal("0", r.headers["x-ratelimit-remaining"])
      assert.equal("3", r.headers["x-ratelimit-limit"])
      assert.equal(200, hit(f, "10.0.0.2").status) -- another client has its own bucket
    end)

    it("refills at `rate` tokens per second over the injected clock", function()
      local f = testing.load({ F, { dict = dict, rate = 10, burst = 20 } })
      for _ = 1, 20 do assert.equal(200, hit(f).status) end
      assert.equal(429, hit(f).status)
      clock:advance(0.05)
      assert.equal(429, hit(f).status)
      clock:advance(0.05)
      local r = hit(f)
      assert.equal(200, r.status)
      assert.equal("0", r.headers["x-ratelimit-remaining"])
      clock:advance(1) -- 10 tokens back
      for _ = 1, 10 do assert.equal(200, hit(f).status) end
      assert.equal(429, hit(f).status)
      clock:advance(100) -- full again, never above burst
      for _ = 1, 20 do assert.equal(200, hit(f).status) end
      assert.equal(429, hit(f).status)
    end)

    it("stores one number per key with a TTL that ends when the bucket is full", function()
      local f = testing.load({ F, { dict = dict, rate = 2, burst = 4 } })
      hit(f); hit(f)
      local keys = dict:get_keys()
      assert.same({ "rl||ip|10.0.0.1" }, keys)
      assert.is_number(dict:get(keys[1]))
      assert.near(1, dict:ttl(keys[1]), 1e-9)
      clock:advance(1)
      assert.same({}, dict:get_keys())
    end)

    it("computes Retry-After from the time to the next token", function()
      local f = testing.load({ F, { dict = dict, rate = 0.1, burst = 1 } })
      assert.equal(200, hit(f).status)
      local r = hit(f)
      assert.equal(429, r.status)
      assert.equal("10", r.headers["retry-after"])
      clock:advance(7.5)
      assert.equal("3", hit(f).headers["retry-after"])
    end)

    it("keys by header (falling back to the address), by function, and scopes", function()
      local f = testing.load({ F, { dict = dict, rate = 1, burst = 1, key = "header:X-Api-Key" } })
      assert.equal(200, hit(f, "1.1.1.1", { ["X-Api-Key"] = "k1" }).status)
      assert.equal(429, hit(f, "2.2.2.2", { ["X-Api-Key"] = "k1" }).status)
      assert.equal(200, hit(f, "2.2.2.2", { ["X-Api-Key"] = "k2" }).status)
      assert.equal(200, hit(f, "3.3.3.3").status)
      assert.equal(429, hit(f, "3.3.3.3").status)
      local g = testing.load({ F, { dict = dict, rate = 1, burst = 1, scope = "other",
        key = function(req) return req:header("x-user") end } })
      assert.equal(200, hit(g, "3.3.3.3", { ["X-User"] = "u" }).status)
      assert.equal(429, hit(g, "4.4.4.4", { ["X-User"] = "u" }).status)
      assert.equal(200, hit(g, "4.4.4.4").status) -- nil key: not limited
      assert.equal(200, hit(g, "4.4.4.4").status)
    end)

    it("lets headers = false drop the headers on allowed responses", function()
      local f = testing.load({ F, { dict = dict, rate = 1, headers = false } })
      assert.is_nil(f.on_response)
      assert.is_nil(hit(f).headers["x-ratelimit-limit"])
    end)

    it("validates options", function()
      assert.matches("option 'rate' is required", load_error({ F, { dict = "limits" } }))
      assert.matches("option 'rate' is required.*got number 0", load_error({ F, { dict = "limits", rate = 0 } }))
      assert.matches("option 'burst' must be an integer >= 1", load_error({ F, { dict = "limits", rate = 1, burst = 0.5 } }))
      assert.matches("option 'dict' is required", load_error({ F, { rate = 1 } }))
      assert.matches("option 'dict' is invalid: no shared dict named 'nope'", load_error({ F, { dict = "nope", rate = 1 } }))
      assert.matches("option 'dict' must be a shared dict name or a dict object",
        load_error({ F, { dict = {}, rate = 1 } }))
      assert.matches("option 'key' must be \"remote_addr\"", load_error({ F, { dict = "limits", rate = 1, key = "ip" } }))
      assert.matches("option 'key' must be a valid header name",
        load_error({ F, { dict = "limits", rate = 1, key = "header:" } }))
      assert.matches("option 'status' must be an HTTP status", load_error({ F, { dict = "limits", rate = 1, status = 1 } }))
    end)
  end)

  describe("cors", function()
    local F = "moonring.filters.cors"

    local function preflight(o, origin, extra)
      local h = { Origin = origin, ["Access-Control-Request-Method"] = "PUT" }
      for k, v in pairs(extra or {}) do h[k] = v end
      return run({ F, o }, request{ method = "OPTIONS", headers = h }, response{ status = 500 })
    end

    it("answers a preflight with 204 and the allow headers, without reaching upstream", function()
      local r = preflight({ origins = { "https://app.example.com" }, methods = { "GET", "PUT" },
        headers = { "Content-Type", "X-Token" }, credentials = true, max_age = 600 }, "https://app.example.com")
      assert.is_true(r.responded)
      assert.equal(204, r.status)
      assert.equal("https://app.example.com", r.headers["access-control-allow-origin"])
      assert.equal("GET, PUT", r.headers["access-control-allow-methods"])
      assert.equal("Content-Type, X-Token", r.headers["access-control-allow-headers"])
      assert.equal("true", r.headers["access-control-allow-credentials"])
      assert.equal("600", r.headers["access-control-max-age"])
      assert.equal("Origin", r.headers["vary"])
      assert.is_nil(r.headers["access-control-expose-headers"])
    end)

    it("echoes requested headers when `headers` is not set, and answers * for any origin", function()
      local r = preflight(nil, "https://x.test", { ["Access-Control-Request-Headers"] = "x-a, x-b" })
      assert.equal(204, r.status)
      assert.equal("*", r.headers["access-control-allow-origin"])
      assert.equal("x-a, x-b", r.headers["access-control-allow-headers"])
      assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE", r.headers["access-control-allow-methods"])
      assert.equal("Access-Control-Request-Headers", r.headers["vary"])
      assert.is_nil(r.headers["access-control-max-age"])
    end)

    it("refuses a preflight from a foreign origin with 403", function()
      local r = preflight({ origins = { "https://app.example.com" } }, "https://evil.example")
      assert.equal(403, r.status)
      assert.is_nil(r.headers["access-control-allow-origin"])
    end)

    it("adds Allow-Origin (and Vary) to simple requests in on_response", function()
      local o = { origins = { "https://app.example.com", "https://*.example.org" }, expose = { "X-Request-Id" }, credentials = true }
      local r = run({ F, o }, request{ headers = { Origin = "https://app.example.com" } },
        response{ headers = { Vary = "Accept-Encoding" } })
      assert.is_false(r.responded)
      assert.equal(200, r.status)
      assert.equal("https://app.example.com", r.headers["access-control-allow-origin"])
      assert.equal("true", r.headers["access-control-allow-credentials"])
      assert.equal("X-Request-Id", r.headers["access-control-expose-headers"])
      assert.equal("Accept-Encoding, Origin", r.headers["vary"])
      -- wildcard subdomains, any depth, but not the bare domain nor look-alikes
      for origin, ok in pairs({ ["https://a.example.org"] = true, ["https://a.b.example.org"] = true,
        ["https://example.org"] = false, ["http://a.example.org"] = false, ["https://aexample.org"] = false,
        ["https://evil.com?.example.org"] = false, ["https://APP.EXAMPLE.COM"] = true }) do
        r = run({ F, o }, request{ headers = { Origin = origin } }, response())
        assert.equal(ok and origin or nil, r.headers["access-control-allow-origin"], origin)
        assert.equal("Origin", r.headers["vary"])
      end
    end)

    it("treats OPTIONS without Access-Control-Request-Method as a simple request", function()
      local r = run(F, request{ method = "OPTIONS", headers = { Origin = "https://x" } }, response{ status = 200 })
      assert.is_false(r.responded)
      assert.equal("*", r.headers["access-control-allow-origin"])
      assert.is_nil(r.headers["vary"])
    end)

    it("reflects the origin for * with credentials; no Origin means no CORS headers", function()
      local r = run({ F, { credentials = true } }, request{ headers = { Origin = "https://x" } }, response())
      assert.equal("https://x", r.headers["access-control-allow-origin"])
      assert.equal("Origin", r.headers["vary"])
      r = run({ F, { origins = "https://x" } }, request(), response())
      assert.is_nil(r.headers["access-control-allow-origin"])
      assert.equal("Origin", r.headers["vary"])
    end)

    it("validates options", function()
      assert.matches("option 'origins%[1%]' must be \"%*\" or an origin", load_error({ F, { origins = { "example.com" } } }))
      assert.matches("option 'origins%[1%]' must be \"%*\" or an origin",
        load_error({ F, { origins = { "https://example.com/" } } }))
      assert.matches("option 'origins%[1%]' may only use '%*' as the first label",
        load_error({ F, { origins = { "https://a.*.com" } } }))
      assert.matches("option 'origins' must not be empty", load_error({ F, { origins = {} } }))
      assert.matches("option 'origins' must be a string or a list of strings", load_error({ F, { origins = 5 } }))
      assert.matches("option 'methods%[1%]' is not a method", load_error({ F, { methods = { "GE T" } } }))
      assert.matches("option 'headers%[2%]' must be a valid header name",
        load_error({ F, { headers = { "A", "B C" } } }))
      assert.matches("option 'max_age' must be an integer", load_error({ F, { max_age = -1 } }))
      assert.matches("option 'credentials' must be a boolean", load_error({ F, { credentials = 1 } }))
    end)
  end)

  describe("ip_restriction", function()
    local F = "moonring.filters.ip_restriction"
    local function status(o, addr)
      local r = run({ F, o }, request{ remote_addr = addr })
      return r.responded and r.status or "pass"
    end

    it("allows listed IPv4 networks and addresses, at the CIDR boundaries", function()
      local o = { allow = { "10.0.0.0/8", "192.168.1.0/24", "127.0.0.1", "172.16.0.0/12" } }
      assert.equal("pass", status(o, "10.0.0.0"))
      assert.equal("pass", status(o, "10.255.255.255"))
      assert.equal(403, status(o, "11.0.0.0"))
      assert.equal(403, status(o, "9.255.255.255"))
      assert.equal("pass", status(o, "192.168.1.255"))
      assert.equal(403, status(o, "192.168.2.0"))
      assert.equal(403, status(o, "192.168.0.255"))
      assert.equal("pass", status(o, "127.0.0.1"))
      assert.equal(403, status(o, "127.0.0.2"))
      assert.equal("pass", status(o, "172.31.255.255"))
      assert.equal(403, status(o, "172.32.0.0"))
      assert.equal("pass", status(o, "::ffff:10.1.2.3")) -- IPv4-mapped
    end)

    it("lets deny win over allow", function()
      local o = { allow = { "10.0.0.0/8" }, deny = { "10.0.13.0/24", "10.9.9.9" } }
      assert.equal("pass", status(o, "10.0.12.255"))
      assert.equal(403, status(o, "10.0.13.0"))
      assert.equal(403, status(o, "10.0.13.255"))
      assert.equal("pass", status(o, "10.0.14.0"))
      assert.equal(403, status(o, "10.9.9.9"))
      assert.equal("pass", status({ deny = { "1.2.3.4" } }, "1.2.3.5"))
      assert.equal(403, status({ deny = { "0.0.0.0/0" } }, "8.8.8.8"))
      assert.equal("pass", status({ deny = { "0.0.0.0/0" } }, "2001:db8::1"))
    end)

    it("matches IPv6 addresses and prefixes", function()
      local o = { allow = { "::1", "2001:db8::/32", "fe80::/10", "2001:db8:1:2:3:4:5:6/127", "::ffff:0:0/96" },
        deny = { "2001:db8:dead::/48" } }
      assert.equal("pass", status(o, "::1"))
      assert.equal(403, status(o, "::2"))
      assert.equal("pass", status(o, "2001:db8::"))
      assert.equal("pass", status(o, "2001:0DB8:ffff:ffff:ffff:ffff:ffff:ffff"))
      assert.equal(403, status(o, "2001:db9::"))
      assert.equal(403, status(o, "2001:db7:ffff::"))
      assert.equal(403, status(o, "2001:db8:dead:beef::1"))
      assert.equal("pass", status(o, "fe80::1%eth0"))
      assert.equal("pass", status(o, "febf:ffff::"))
      assert.equal(403, status(o, "fec0::"))
      assert.equal("pass", status(o, "1.2.3.4")) -- via ::ffff:0:0/96
      assert.equal("pass", status({ allow = { "2001:db8:1:2:3:4:5:6/127" } }, "2001:db8:1:2:3:4:5:7"))
      assert.equal(403, status({ allow = { "2001:db8:1:2:3:4:5:6/127" } }, "2001:db8:1:2:3:4:5:8"))
      assert.equal("pass", status({ allow = { "::/0" } }, "abcd::"))
      assert.equal("pass", status({ allow = { "1:2:3:4:5:6:1.2.3.4" } }, "1:2:3:4:5:6:102:304"))
      assert.equal("pass", status({ allow = { "::ffff:1.2.3.4" } }, "1.2.3.4"))
    end)

    it("refuses unparseable addresses and strips ports", function()
      local o = { deny = { "9.9.9.9" } }
      for _, bad in ipairs({ "", "1.2.3", "1.2.3.256", "::1::", "1:2:3:4:5:6:7:8:9", "gggg::", "unix:/tmp/s" }) do
        assert.equal(403, status(o, bad), bad)
      end
      assert.equal("pass", status({ allow = { "127.0.0.1", "::1" } }, "127.0.0.1:5555"))
      assert.equal("pass", status({ allow = { "127.0.0.1", "::1" } }, "[::1]:5555"))
    end)

    it("takes status and message", function()
      local r = run({ F, { deny = { "1.2.3.4" }, status = 404, message = "gone" } }, request{ remote_addr = "1.2.3.4" })
      assert.same({ 404, "gone" }, { r.status, r.body })
    end)

    it("validates options", function()
      assert.matches("option 'allow' %(or 'deny'%) must list at least one address", load_error({ F, {} }))
      assert.matches("option 'allow%[1%]' is not an IPv4/IPv6 address or CIDR", load_error({ F, { allow = { "10.0.0/8" } } }))
      assert.matches("option 'deny%[2%]' has a prefix length above 32", load_error({ F, { deny = { "1.1.1.1", "10.0.0.0/33" } } }))
      assert.matches("option 'deny%[1%]' has a prefix length above 128", load_error({ F, { deny = { "::/129" } } }))
      assert.matches("option 'allow%[1%]' is not an IPv4/IPv6", load_error({ F, { allow = { "1:::2" } } }))
      assert.matches("option 'allow' must be a string or a list", load_error({ F, { allow = 10 } }))
    end)
  end)

  describe("respond", function()
    local F = "moonring.filters.respond"

    it("answers with a static response", function()
      local r = run({ F, { status = 503, body = "down\n", headers = { ["Retry-After"] = 120 } } }, request())
      assert.same({ true, 503, "down\n" }, { r.responded, r.status, r.body })
      assert.equal("120", r.headers["retry-after"])
      assert.equal("text/plain; charset=utf-8", r.headers["content-type"])
      r = run({ F, { body = "{}", headers = { ["content-type"] = "application/json" } } }, request())
      assert.equal(200, r.status)
      assert.equal("application/json", r.headers["content-type"])
      r = run(F, request())
      assert.same({ 200, "" }, { r.status, r.body })
      assert.is_nil(r.headers["content-type"])
    end)

    it("validates options", function()
      assert.matches("option 'status' must be an HTTP status code %(100%-599%), got number 600", load_error({ F, { status = 600 } }))
      assert.matches("option 'body' must be a string", load_error({ F, { body = 1 } }))
      assert.matches("option 'headers.X' must be a header value", load_error({ F, { headers = { X = "\n" } } }))
    end)
  end)

  describe("access_log_json", function()
    local F = "moonring.filters.access_log_json"

    it("writes one JSON line with the request's facts", function()
      local lines = {}
      local slow = { on_request = function(_, ctx) require("moonring").sleep(0.25); ctx.upstream = "api" end }
      local r = run_chain({ { F, { writer = function(l) lines[#lines + 1] = l end, fields = { env = "test",
          ua = function(req) return req:header("user-agent") end } } },
        "moonring.filters.request_id",
        { "moonring.filters.rewrite", { from = "^/a", to = "/b" } }, slow },
        request{ method = "POST", path = "/a/x?q=1", remote_addr = "10.1.1.1", headers = { ["User-Agent"] = 'cu"rl' } },
        response{ status = 201, body = { "ab", "cde" } })
      assert.equal(1, #lines)
      local t = decode_json(lines[1])
      assert.same({
        time = "2023-11-14T22:13:20.000Z", remote_addr = "10.1.1.1", method = "POST", host = "localhost",
        path = "/a/x", query = "q=1", status = 201, bytes = 5, duration = 0.25, request_id = r.ctx.request_id,
        upstream = "api", env = "test", ua = 'cu"rl',
      }, t)
      assert.matches('^{"time":".-","remote_addr":"10.1.1.1","method":"POST","host":"localhost","path":"/a/x",'
        .. '"query":"q=1","status":201,"bytes":5,"duration":0.25,"request_id":"%x+","upstream":"api","user":null,'
        .. '"upstream_addr":null,"upstream_status":null,"upstream_connect_time":null,"upstream_response_time":null,'
        .. '"env":"test","ua":"cu\\"rl"}$', lines[1])
    end)

    it("logs short-circuited requests and defaults to moonring.log", function()
      local before = #testing.logs
      run_chain({ F, { "moonring.filters.respond", { status = 404 } } }, request())
      local entry = testing.logs[before + 1]
      assert.equal("info", entry.level)
      assert.matches('"status":404,"bytes":0,"duration":0,', entry.message)
      assert.matches('"query":null', entry.message)
    end)

    it("uses Content-Length with count_body = false", function()
      local line
      local f = testing.load({ F, { count_body = false, writer = function(l) line = l end } })
      assert.is_nil(f.on_body)
      run(f, request(), response{ headers = { ["Content-Length"] = 1234 }, body = "x" })
      assert.matches('"bytes":1234,', line)
    end)

    it("validates options", function()
      assert.matches("option 'writer' must be a function", load_error({ F, { writer = "stdout" } }))
      assert.matches("option 'count_body' must be a boolean", load_error({ F, { count_body = 1 } }))
      assert.matches("option 'fields.x' cannot be encoded as JSON", load_error({ F, { fields = { x = { y = print } } } }))
    end)
  end)
end)

describe("filter helpers", function()
  it("encode JSON correctly", function()
    local enc = util.json_encode
    assert.equal('"a\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f"', enc('a"b\\c\n\r\t\b\f\1\31\127'))
    assert.equal('"h\195\169llo \226\130\172 \240\159\152\128"', enc("h\195\169llo \226\130\172 \240\159\152\128"))
    assert.equal('"bad \\ufffd \\ufffd\\ufffd x"', enc("bad \255 \192\175 x")) -- invalid byte, overlong
    assert.equal('"\\ufffd\\ufffd\\ufffd"', enc("\237\160\128")) -- UTF-16 surrogate
    assert.equal('"\\ufffd\\ufffd"', enc("\226\130")) -- truncated: one per byte
    assert.equal('[1,2.5,"x",true]', enc({ 1, 2.5, "x", true }))
    assert.equal('{"a":1,"b":[false],"c":{}}', enc({ b = { false }, a = 1, c = {} }))
    assert.equal("null", enc(0 / 0))
    assert.equal("null", enc(math.huge))
    assert.equal("1e+300", enc(1e300))
    assert.equal("-3", enc(-3))
    assert.has_error(function() enc(print) end, "json: cannot encode a function")
    local cyc = {}
    cyc.self = cyc
    assert.has_error(function() enc(cyc) end, "json: nesting too deep (a cycle?)")
  end)

  it("decode base64 strictly", function()
    assert.equal("alice:secret", util.b64decode("YWxpY2U6c2VjcmV0"))
    assert.equal("a", util.b64decode("YQ=="))
    assert.equal("a", util.b64decode("YQ"))
    assert.equal("ab", util.b64decode("YWI="))
    assert.equal("", util.b64decode(""))
    assert.is_nil(util.b64decode("Y"))
    assert.is_nil(util.b64decode("YQ="))
    assert.is_nil(util.b64decode("Y*=="))
    assert.is_nil(util.b64decode("YWxp Y2U="))
    assert.is_nil(util.b64decode(("A"):rep(5000)))
  end)

  it("compare in constant time", function()
    assert.is_true(util.secure_eq("abc", "abc"))
    assert.is_false(util.secure_eq("abc", "abd"))
    assert.is_false(util.secure_eq("abc", "ab"))
    assert.is_false(util.secure_eq("ab", "abc"))
    assert.is_false(util.secure_eq("", "a"))
    assert.is_true(util.secure_eq("", ""))
  end)

  it("hash with SHA-256 through libcrypto", function()
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", util.tohex(util.sha256("")))
    assert.equal("2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b", util.tohex(util.sha256("secret")))
  end)
end)
