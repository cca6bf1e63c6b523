-- Yielding I/O from Lua through the real binary: cosockets (moonring.tcp) against a raw line
-- server, the HTTP client (moonring.http) against mr-origin, timers (moonring.timer) including
-- premature runs on reload, and req:body() with forwarding of the buffered body.
local helpers = require "helpers"
local socket = require "socket"

local function start_line_server()
  local h = helpers.spawn("luajit " .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/line_server.lua"),
    helpers.tmpname("lines", ".log"))
  local port
  assert(helpers.eventually(function()
    port = tonumber((h.log():match("listening (%d+)")))
    return port ~= nil
  end, 5), "line server did not start: " .. h.log())
  return { port = port, handle = h }
end

local function nfds(pid)
  local p = io.popen("ls /proc/" .. pid .. "/fd | wc -l")
  local n = tonumber(p:read("*a"))
  p:close()
  return n
end

describe("lua yielding I/O", function()
  local lines, origin, mr, port, base, admin

  setup(function()
    lines = start_line_server()
    origin = helpers.start_origin()
    port = helpers.free_port()
    admin = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    local conf = ([[
local moonring = require "moonring"
local LP, OP = %d, %d

local function roundtrip(text)
  local s = moonring.tcp()
  s:settimeout(2000)
  assert(s:connect("127.0.0.1", LP))
  assert(s:send("echo " .. text .. "\n"))
  local line = assert(s:receive("*l"))
  assert(s:setkeepalive(10000, 4))
  return line
end

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  admin = { listen = "127.0.0.1:%d" },
  shared = { io = "1m" },
  lua = { max_timers = 50, max_body = "512k" },
  limits = { client_max_body_size = "4m" },
  init_worker = function(premature)
    moonring.shared.io:incr("inits", 1, 0)
    assert(moonring.timer.every(0.1, function(p)
      if not p then moonring.shared.io:incr("ticks", 1, 0) end
    end))
  end,
  upstreams = { origin = { servers = { "127.0.0.1:" .. OP }, keepalive = 4 } },
  routes = {
    { path = "/tcp/patterns", handler = function(req)
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", LP))
        assert(s:send({ "multi", "\n" }))
        local a = assert(s:receive("*l"))
        local b = assert(s:receive())
        s:settimeout(300)
        local c, err, partial = s:receive("*l")
        assert(s:send("bytes 40\n"))
        s:settimeout(2000)
        local n1 = assert(s:receive(10))
        local n2 = assert(s:receive(30))
        assert(s:send("bye\n"))
        local all = assert(s:receive("*a"))
        local after, err2 = s:receive("*l")
        return 200, table.concat({ a, b, tostring(c), err, partial, n1, n2, all, tostring(after), err2 }, "|")
      end },
    { path = "/tcp/until", handler = function(req)
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", LP))
        assert(s:send("until\n"))
        local r = s:receiveuntil("--XX--")
        local first = assert(r())
        local parts = {}
        while true do
          local d, err = r(2)
          if not d then assert(not err, err) break end
          parts[#parts + 1] = d
        end
        local rest = assert(s:receive("*l"))
        s:close()
        return 200, first .. "|" .. table.concat(parts, ",") .. "|" .. rest
      end },
    { path = "/tcp/errors", handler = function(req)
        local out = {}
        local s = moonring.tcp()
        out[#out + 1] = select(2, s:connect("127.0.0.1", 1))
        out[#out + 1] = select(2, s:connect("no-such-host.invalid", 80))
        s = moonring.tcp()
        s:settimeouts(1000, 1000, 200)
        assert(s:connect("127.0.0.1", LP))
        assert(s:send("silent\n"))
        local t0 = moonring.now()
        local ok, err = s:receive("*l")
        out[#out + 1] = err
        out[#out + 1] = string.format("%%.1f", moonring.now() - t0)
        -- still usable after a read timeout
        assert(s:send("echo again\n"))
        out[#out + 1] = s:receive("*l")
        s:close()
        out[#out + 1] = select(2, s:send("x"))
        out[#out + 1] = select(2, s:receive(1))
        out[#out + 1] = select(2, moonring.tcp():connect("bad host", 80))
        return 200, table.concat(out, "|")
      end },
    { path = "/tcp/reuse", handler = function(req)
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", LP))
        local reused = s:getreusedtimes()
        assert(s:send("conns\n"))
        local conns = assert(s:receive("*l"))
        assert(s:setkeepalive(10000, 2))
        return 200, reused .. " " .. conns
      end },
    { path = "/tcp/leak", handler = function(req)
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", LP))
        local s2 = moonring.tcp()
        assert(s2:connect("localhost", LP, { pool = "leak" }))
        assert(s2:send("silent\n"))
        return 200, "left open\n"
      end },
    { path = "/tcp/phases", upstream = "origin", filters = { {
        on_request = function(req, ctx) ctx.r = roundtrip("req") end,
        on_response = function(res, ctx) res:set_header("x-phases", ctx.r .. "," .. roundtrip("resp")) end,
        on_body = function(res, chunk, eof, ctx)
          if eof then return roundtrip("body") end
          return nil
        end,
        on_log = function(req, res, ctx)
          local v = roundtrip("log")
          moonring.shared.io:set("log", v)
        end,
      } } },
    { path = "/tcp/timer", handler = function(req)
        assert(moonring.timer.at(0, function(premature, tag)
          moonring.shared.io:set("timer", roundtrip(tag))
        end, "fromtimer"))
        return 200, "scheduled\n"
      end },
    { path = "/http/get", handler = function(req)
        local res, err = moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/size/100", pool_size = 5 }
        if not res then return 502, err end
        return 200, res.status .. "|" .. #res.body .. "|" .. res.body:sub(1, 5) .. "|" .. res.headers["x-origin"]
      end },
    { path = "/http/post", handler = function(req)
        local res, err = moonring.http.request{ method = "POST", url = "http://localhost:" .. OP .. "/echo",
          body = "hello body", headers = { ["X-Test"] = "1" } }
        if not res then return 502, err end
        return 200, res.status .. "|" .. res.body .. "|" .. res.headers["x-body-length"]
      end },
    { path = "/http/chunked", handler = function(req)
        local res, err = moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/chunked/100000" }
        if not res then return 502, err end
        local want = {}
        for i = 0, 99999 do want[#want + 1] = string.char(97 + i %% 26) end
        return 200, res.status .. "|" .. #res.body .. "|" .. tostring(res.body == table.concat(want))
          .. "|" .. tostring(res.headers["transfer-encoding"])
      end },
    { path = "/http/reuse", handler = function(req)
        for i = 1, 3 do
          local res, err = moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/size/10" }
          if not res then return 502, err end
        end
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", OP))
        local n = s:getreusedtimes()
        s:close()
        return 200, tostring(n)
      end },
    { path = "/http/errors", handler = function(req)
        local out = {}
        local t0 = moonring.now()
        out[#out + 1] = select(2, moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/slow/3000", timeout = 0.2 })
        out[#out + 1] = string.format("%%.1f", moonring.now() - t0)
        out[#out + 1] = select(2, moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/size/2000", max_body_size = 1000 })
        out[#out + 1] = select(2, moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/chunked/200000", max_body_size = 100000 })
        out[#out + 1] = select(2, moonring.http.request{ url = "ftp://127.0.0.1:" .. OP .. "/" })
        out[#out + 1] = select(2, moonring.http.request{ url = "http://127.0.0.1:1/" })
        -- the pool still serves after all that
        local res = moonring.http.request{ url = "http://127.0.0.1:" .. OP .. "/size/3" }
        out[#out + 1] = res and res.body
        return 200, table.concat(out, "|")
      end },
    { path = "/body/echo", handler = function(req)
        local b, err = req:body()
        if not b then return 413, err end
        local again = req:body()
        assert(again == b)
        return 200, b, { ["X-Len"] = #b }
      end },
    { path = "/bp", strip_prefix = true, upstream = "origin", filters = { {
        on_request = function(req, ctx)
          local b, err = req:body()
          ctx.len = b and #b or err
        end,
        on_response = function(res, ctx) res:set_header("x-lua-body", tostring(ctx.len)) end,
      } } },
    { path = "/get", handler = function(req)
        return 200, tostring(moonring.shared.io:get(req:arg("k"))) .. "\n"
      end },
    { path = "/timer/every", handler = function(req)
        local n = 0
        local h = assert(moonring.timer.every(0.05, function(premature, step)
          n = n + step
          moonring.sleep(0.01)
        end, 1))
        moonring.sleep(0.5)
        assert(h:cancel())
        local seen = n
        moonring.sleep(0.2)
        return 200, seen .. " " .. n
      end },
    { path = "/timer/boom", handler = function(req)
        assert(moonring.timer.at(0, function() error("boom in a timer") end))
        return 200, "ok\n"
      end },
    { path = "/timer/cap", handler = function(req)
        local hs, err = {}, nil
        for i = 1, 60 do
          local h, e = moonring.timer.at(60, function() end)
          if not h then err = e break end
          hs[#hs + 1] = h
        end
        for _, h in ipairs(hs) do h:cancel() end
        return 200, #hs .. "|" .. tostring(err)
      end },
    { path = "/timer/long", handler = function(req)
        assert(moonring.timer.at(30, function(premature)
          moonring.shared.io:set("premature", tostring(premature))
        end))
        return 200, "ok\n"
      end },
    { path = "/log/yield", handler = function() return 200, "ok\n" end, filters = { {
        on_log = function(req, res, ctx)
          local status = res.status
          moonring.sleep(0.1)
          moonring.shared.io:set("logyield", status .. " " .. roundtrip("late"))
        end } } },
  },
}
]]):format(lines.port, origin.port, port, admin)
    mr = helpers.start_moonring(conf, { wait_port = port })
  end)

  teardown(function()
    helpers.stop_all()
    if lines then lines.handle.stop("KILL") end
  end)

  local function get(path)
    return assert(helpers.http("GET", base .. path, { timeout = 10 }))
  end

  it("ran init_worker at start", function()
    assert(helpers.eventually(function() return get("/get?k=inits").body == "1\n" end, 5))
  end)

  it("receives lines, byte counts and everything until close", function()
    local res = get("/tcp/patterns")
    assert.equal(200, res.status)
    local f = {}
    for x in (res.body .. "|"):gmatch("(.-)|") do f[#f + 1] = x end
    assert.same({ "a", "b", "nil", "timeout", "c", "abcdefghij", "klmnopqrstuvwxyzabcdefghijklmn", "bye", "nil", "closed" }, f)
  end)

  it("reads up to a delimiter, whole or in pieces", function()
    local res = get("/tcp/until")
    assert.equal("one|tw,o|three", res.body)
  end)

  it("reports refused, unresolvable, timeout and closed as nil, err", function()
    local res = get("/tcp/errors")
    local f = {}
    for x in (res.body .. "|"):gmatch("(.-)|") do f[#f + 1] = x end
    assert.equal("connection refused", f[1])
    -- "host not found", or without any DNS server "temporary failure in name resolution"
    assert.is_truthy(f[2]:find("host not found", 1, true) or f[2]:find("name resolution", 1, true), f[2])
    assert.equal(" (no-such-host.invalid)", f[2]:sub(-23))
    assert.equal("timeout", f[3])
    assert.is_true(tonumber(f[4]) >= 0.1 and tonumber(f[4]) < 1.5, f[4])
    assert.equal("again", f[5])
    assert.equal("closed", f[6])
    assert.equal("closed", f[7])
    assert.equal("invalid host name (bad host)", f[8])
  end)

  it("reuses kept-alive connections from the worker's pool", function()
    local first = get("/tcp/reuse").body
    local second = get("/tcp/reuse").body
    local r1, c1 = first:match("(%d+) (%d+)")
    local r2, c2 = second:match("(%d+) (%d+)")
    assert.is_true(tonumber(r2) > tonumber(r1), first .. " / " .. second)
    assert.equal(c1, c2) -- no new connection accepted by the server
  end)

  it("closes sockets a script left open when the request ends", function()
    get("/tcp/leak")
    local before = nfds(mr.pid)
    for _ = 1, 20 do get("/tcp/leak") end
    assert(helpers.eventually(function() return nfds(mr.pid) <= before end, 5),
      "fds grew from " .. before .. " to " .. nfds(mr.pid))
  end)

  it("uses sockets in on_request, on_response, on_body, on_log and timers", function()
    local res = get("/tcp/phases/size/10")
    assert.equal(200, res.status)
    assert.equal("req,resp", res.headers["x-phases"])
    assert.equal("body", res.body)
    assert(helpers.eventually(function() return get("/get?k=log").body == "log\n" end, 5))
    get("/tcp/timer")
    assert(helpers.eventually(function() return get("/get?k=timer").body == "fromtimer\n" end, 5))
  end)

  it("continues a yielding on_log after the response was sent", function()
    local t0 = socket.gettime()
    assert.equal("ok\n", get("/log/yield").body)
    assert.is_true(socket.gettime() - t0 < 0.1 + 0.5)
    assert(helpers.eventually(function() return get("/get?k=logyield").body == "200 late\n" end, 5))
  end)

  it("makes HTTP requests with moonring.http: GET, POST, chunked", function()
    assert.equal("200|100|abcde|" .. origin.port, get("/http/get").body)
    assert.equal("200|hello body|10", get("/http/post").body)
    assert.equal("200|100000|true|chunked", get("/http/chunked").body)
  end)

  it("keeps HTTP client connections alive in the worker's pool", function()
    local n = tonumber(get("/http/reuse").body)
    assert.is_true(n >= 3, "reused " .. tostring(n))
  end)

  it("reports HTTP client timeouts, size limits, bad schemes and refusals as nil, err", function()
    local f = {}
    for x in (get("/http/errors").body .. "|"):gmatch("(.-)|") do f[#f + 1] = x end
    assert.equal("timeout", f[1])
    assert.is_true(tonumber(f[2]) < 1.5, f[2])
    assert.equal("response too large", f[3])
    assert.equal("response too large", f[4])
    assert.equal("unsupported url scheme 'ftp'", f[5])
    assert.equal("connection refused", f[6])
    assert.equal("abc", f[7])
  end)

  local function binary(n, seed)
    local t = {}
    for i = 1, n do t[i] = string.char((i * 7 + seed) % 256) end
    return table.concat(t)
  end

  local function chunked(body, size)
    local t = {}
    for i = 1, #body, size do
      local piece = body:sub(i, i + size - 1)
      t[#t + 1] = ("%x\r\n%s\r\n"):format(#piece, piece)
    end
    t[#t + 1] = "0\r\n\r\n"
    return table.concat(t)
  end

  it("req:body() reads the whole body in a handler, under the limit", function()
    local body = binary(300000, 3)
    local res = assert(helpers.http("POST", base .. "/body/echo", { body = body, timeout = 10 }))
    assert.equal(200, res.status)
    assert.equal("300000", res.headers["x-len"])
    assert.is_true(res.body == body)
    res = get("/body/echo")
    assert.equal("0", res.headers["x-len"])
    res = assert(helpers.http("POST", base .. "/body/echo", { body = chunked(body, 7000), timeout = 10,
      headers = { ["Transfer-Encoding"] = "chunked" } }))
    assert.equal(200, res.status)
    assert.is_true(res.body == body)
  end)

  it("req:body() returns nil, 'too large' over lua.max_body", function()
    local body = binary(700000, 5)
    local res = assert(helpers.http("POST", base .. "/body/echo", { body = body, timeout = 10 }))
    assert.equal(413, res.status)
    assert.equal("too large", res.body)
    res = assert(helpers.http("POST", base .. "/body/echo", { body = chunked(body, 10000), timeout = 10,
      headers = { ["Transfer-Encoding"] = "chunked" } }))
    assert.equal(413, res.status)
    assert.equal("too large", res.body)
    assert.equal(200, get("/get?k=x").status)
  end)

  it("forwards a body read by req:body() to the origin byte-exact", function()
    local body = binary(300000, 11)
    local want = ("%d %s\n"):format(#body, helpers.fnv1a32(body))
    local res = assert(helpers.http("POST", base .. "/bp/sink", { body = body, timeout = 10 }))
    assert.equal(200, res.status)
    assert.equal("300000", res.headers["x-lua-body"])
    assert.equal(want, res.body)
    res = assert(helpers.http("POST", base .. "/bp/sink", { body = chunked(body, 4096), timeout = 10,
      headers = { ["Transfer-Encoding"] = "chunked" } }))
    assert.equal(want, res.body)
    -- over the limit: the script goes on, and the origin still gets every byte
    local big = binary(900000, 13)
    local want_big = ("%d %s\n"):format(#big, helpers.fnv1a32(big))
    res = assert(helpers.http("POST", base .. "/bp/sink", { body = chunked(big, 50000), timeout = 10,
      headers = { ["Transfer-Encoding"] = "chunked" } }))
    assert.equal("too large", res.headers["x-lua-body"])
    assert.equal(want_big, res.body)
    res = assert(helpers.http("POST", base .. "/bp/sink", { body = big, timeout = 10 }))
    assert.equal("too large", res.headers["x-lua-body"])
    assert.equal(want_big, res.body)
  end)

  it("serves many concurrent requests that each use the HTTP client and cosockets", function()
    local function load()
      local r = helpers.wrk(base .. "/http/get", { c = 20, d = "1s" })
      assert.is_true(r.requests > 100, r.output)
      assert.equal(0, r.errors.status, r.output)
      assert.equal(0, r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout, r.output)
      r = helpers.wrk(base .. "/tcp/phases/size/10", { c = 20, d = "1s" })
      assert.is_true(r.requests > 100, r.output)
      assert.equal(0, r.errors.status, r.output)
    end
    local before = nfds(mr.pid)
    load()
    load()
    -- what stays open is bounded by the pools: 5 (http client), 4 (line server), 4 (upstream)
    assert(helpers.eventually(function() return nfds(mr.pid) <= before + 13 + 2 end, 10),
      "fds grew from " .. before .. " to " .. nfds(mr.pid))
  end)

  it("runs timer.every until cancelled", function()
    local body = get("/timer/every").body
    local seen, final = body:match("(%d+) (%d+)")
    assert.is_true(tonumber(seen) >= 3, body)
    assert.equal(seen, final)
  end)

  it("logs timer errors with a traceback and keeps the worker", function()
    assert.equal("ok\n", get("/timer/boom").body)
    assert(helpers.eventually(function() return mr.log():find("boom in a timer", 1, true) ~= nil end, 5))
    assert.truthy(mr.log():find("stack traceback", 1, true))
    assert.equal(200, get("/get?k=x").status)
  end)

  it("caps pending timers per worker", function()
    local body = get("/timer/cap").body
    local n, err = body:match("(%d+)|(.*)")
    assert.is_true(tonumber(n) <= 50, body)
    assert.matches("too many pending timers", err)
  end)

  it("fires pending timers once with premature = true when a reload retires their generation", function()
    get("/timer/long")
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(200, res.status)
    assert(helpers.eventually(function() return get("/get?k=premature").body == "true\n" end, 5))
    -- the new generation ran its own init_worker
    assert(helpers.eventually(function() return get("/get?k=inits").body == "2\n" end, 5))
  end)

  it("runs init_worker once per worker, and its timers without any request", function()
    local t1 = tonumber(get("/get?k=ticks").body)
    socket.sleep(0.5)
    local t2 = tonumber(get("/get?k=ticks").body)
    assert.is_true(t2 >= t1 + 2, t1 .. " -> " .. t2)
  end)

  it("validates the lua config keys", function()
    local ok, out = helpers.moonring_check([[
return {
  listen = { "127.0.0.1:1" },
  lua = { max_timers = 0 },
  routes = { { path = "/", handler = function() return 200, "x" end } },
}
]])
    assert.is_false(ok)
    assert.matches(":3: lua%.max_timers: expected integer >= 1, got 0", out)
    ok, out = helpers.moonring_check([[
return {
  listen = { "127.0.0.1:1" },
  lua = { max_bdy = "1m" },
  routes = { { path = "/", handler = function() return 200, "x" end } },
}
]])
    assert.is_false(ok)
    assert.matches("unknown key 'max_bdy' %(did you mean 'max_body'%?%)", out)
  end)

  it("stops cleanly with timers pending, sockets pooled and a socket waiting", function()
    get("/timer/long")
    get("/tcp/reuse")
    -- a handler parked on a silent socket while the worker drains
    local sock = assert(helpers.connect(port))
    sock:send("GET /tcp/errors HTTP/1.1\r\nHost: x\r\n\r\n")
    socket.sleep(0.1)
    assert.equal(0, mr.stop("TERM", 15))
    sock:close()
  end)
end)

-- Host names in cosockets and moonring.http go through the worker's resolver (src/net/resolver.c)
-- and its cache. getaddrinfo is answered by spec/fixtures/fake_dns.c (preloaded), which logs
-- each call, so the spec sees how often moonring asked.
describe("lua yielding I/O: host names", function()
  local lines, origin, mr, base, dns_log

  setup(function()
    lines = start_line_server()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    dns_log = helpers.tmpname("fakedns", ".log")
    local conf = ([[
local moonring = require "moonring"
local LP, OP = %d, %d

local function echo(host, text, timeout)
  local s = moonring.tcp()
  if timeout then s:settimeout(timeout) end
  local ok, err = s:connect(host, LP)
  if not ok then return err end
  assert(s:send("echo " .. text .. "\n"))
  local line = assert(s:receive("*l"))
  s:close()
  return line
end

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  routes = {
    { path = "/many", handler = function(req)
        local out = {}
        for i = 1, 5 do out[i] = echo("cached.mr.test", "n" .. i) end
        out[6] = echo("CACHED.mr.test", "upper")
        local res, err = moonring.http.request{ url = "http://web.mr.test:" .. OP .. "/size/3", keepalive = false }
        out[7] = res and res.status .. " " .. res.body or err
        res, err = moonring.http.request{ url = "http://web.mr.test:" .. OP .. "/size/4", keepalive = false }
        out[8] = res and res.status .. " " .. res.body or err
        return 200, table.concat(out, "|")
      end },
    { path = "/nx", handler = function(req)
        local a = echo("nx1.mr.test", "x")
        local b = echo("nx1.mr.test", "x")
        local _, c = moonring.http.request{ url = "http://nx2.mr.test/" }
        return 200, a .. "|" .. b .. "|" .. c
      end },
    { path = "/slow", handler = function(req)
        return 200, echo(req:arg("host"), "slow", tonumber(req:arg("timeout")))
      end },
  },
}
]]):format(lines.port, origin.port, port)
    mr = helpers.start_moonring(conf, { wait_port = port, preload = helpers.fake_dns_lib,
      env = { MR_FAKEDNS_LOG = dns_log, MR_FAKEDNS_SLOW_MS = 1000 } })
  end)

  teardown(function()
    helpers.stop_all()
    if lines then lines.handle.stop("KILL") end
    os.remove(dns_log)
  end)

  local function get(path, timeout)
    return helpers.http("GET", base .. path, { timeout = timeout or 10 })
  end
  -- How many times moonring called getaddrinfo for name.
  local function asked(name)
    local f = io.open(dns_log)
    if not f then return 0 end
    local n = 0
    for line in f:lines() do if line == name then n = n + 1 end end
    f:close()
    return n
  end

  it("resolves a name once for many connects within the TTL, cosockets and moonring.http alike", function()
    local res = assert(get("/many"))
    assert.equal("n1|n2|n3|n4|n5|upper|200 abc|200 abcd", res.body)
    assert.equal(1, asked("cached.mr.test"))
    assert.equal(1, asked("web.mr.test"))
    -- and for the next request too
    assert.equal(200, assert(get("/many")).status)
    assert.equal(1, asked("cached.mr.test"))
    assert.equal(1, asked("web.mr.test"))
  end)

  it("fails an unknown name with a clear error, and remembers it for a while", function()
    local res = assert(get("/nx"))
    assert.equal("host not found (nx1.mr.test)|host not found (nx1.mr.test)|host not found (nx2.mr.test)", res.body)
    assert.equal(1, asked("nx1.mr.test"))
  end)

  it("cancels a lookup whose connect timed out; its late answer fills the cache", function()
    local t0 = socket.gettime()
    local res = assert(get("/slow?host=slow1.mr.test&timeout=200"))
    assert.equal("timeout", res.body)
    assert.is_true(socket.gettime() - t0 < 0.9)
    -- the answer arrives with nobody waiting; the next connect takes it from the cache
    assert(helpers.eventually(function() return asked("slow1.mr.test") == 1 end, 5))
    socket.sleep(1.2)
    t0 = socket.gettime()
    assert.equal("slow", assert(get("/slow?host=slow1.mr.test")).body)
    assert.is_true(socket.gettime() - t0 < 0.5)
    assert.equal(1, asked("slow1.mr.test"))
  end)

  it("cancels a lookup pending when the client goes away, and keeps serving", function()
    local sock = assert(helpers.connect(mr.port))
    sock:send("GET /slow?host=slow2.mr.test HTTP/1.1\r\nHost: x\r\n\r\n")
    assert(helpers.eventually(function() return asked("slow2.mr.test") == 1 end, 5))
    sock:close()
    socket.sleep(1.3) -- the lookup finishes after its request went away
    assert.is_true(mr.alive())
    assert.equal("slow", assert(get("/slow?host=slow2.mr.test")).body)
    assert.equal(1, asked("slow2.mr.test"))
    assert.equal("n1|n2|n3|n4|n5|upper|200 abc|200 abcd", assert(get("/many")).body)
  end)

  it("stops at once while a getaddrinfo is stuck on a dead DNS server", function()
    assert.equal("timeout", assert(get("/slow?host=hang1.mr.test&timeout=200")).body)
    assert(helpers.eventually(function() return asked("hang1.mr.test") == 1 end, 5))
    local t0 = socket.gettime()
    assert.equal(0, mr.stop("TERM", 15))
    assert.is_true(socket.gettime() - t0 < 3, "stop took " .. (socket.gettime() - t0) .. " s")
  end)
end)
