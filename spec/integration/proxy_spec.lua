-- moonring's behaviour contract as a reverse proxy, checked end to end against
-- the real binary (MOONRING_BIN) in front of mr-origin (MR_ORIGIN_BIN).
local helpers = require "helpers"
local socket = require "socket"

local MiB = 1024 * 1024
-- ASan's shadow memory and quarantine inflate RSS; the 100 MiB budget is for real builds.
local RSS_LIMIT_KB = os.getenv("ASAN_OPTIONS") and 600 * 1024 or 100 * 1024

local function first_final(list)
  for _, r in ipairs(list) do
    if r.status >= 200 or r.status == 101 then return r end
  end
end

-- Header names of a raw request head, lowercased → value (comma-joined).
local function head_headers(head)
  local h = {}
  for line in head:gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      h[name] = h[name] and (h[name] .. ", " .. value) or value
    end
  end
  return h
end

local function elapsed_since(t0) return socket.gettime() - t0 end

describe("proxy", function()
  local origin, mr, port, base, dead_port, blackhole

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    dead_port = helpers.free_port()    -- nothing listens here
    -- listens, never accepts: connections complete in the backlog and nothing is ever read
    blackhole = assert(socket.bind("127.0.0.1", 0, 8))
    base = "http://127.0.0.1:" .. port
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = {
    origin  = { servers = { "127.0.0.1:%d" }, keepalive = 16, connect_timeout = "2s", read_timeout = "30s" },
    quick   = { servers = { "127.0.0.1:%d" }, keepalive = 16, read_timeout = "1s" },
    dead    = { servers = { "127.0.0.1:%d" }, connect_timeout = "1s", tries = 1 },
    retry   = { servers = { "127.0.0.1:%d", "127.0.0.1:%d" }, connect_timeout = "1s", tries = 2 },
    stuck   = { servers = { "127.0.0.1:%d" }, send_timeout = "1s", read_timeout = "30s", tries = 1 },
  },
  routes = {
    { path = "/lua", handler = function(req, ctx)
        return req:respond(200, "hello from lua\n", { ["content-type"] = "text/plain" })
      end },
    { path = "/hang", upstream = "quick" },
    { path = "/drip", upstream = "quick" },
    { path = "/stuck", upstream = "stuck" },
    { path = "/refused", upstream = "dead" },
    { path = "/retry", upstream = "retry" },
    { path = "/", upstream = "origin" },
  },
  limits = { client_max_body_size = "2g", header_timeout = "5s" },
}
]]):format(port, origin.port, origin.port, dead_port, dead_port, origin.port,
  select(2, blackhole:getsockname())))
  end)

  teardown(function()
    blackhole:close()
    helpers.stop_all()
  end)

  it("GET returns the origin's status and body with proper framing", function()
    local res = assert(helpers.http("GET", base .. "/hello?x=1"))
    assert.equal(200, res.status)
    assert.equal("ok " .. origin.port .. " GET /hello\n", res.body)
    assert.equal(tostring(origin.port), res.headers["x-origin"])
    assert.is_true(res.headers["content-length"] ~= nil
      or (res.headers["transfer-encoding"] or ""):lower() == "chunked", res.raw_head)
    assert.is_nil(res.read_until_close, "response was delimited by close, not framed")
    local r404 = assert(helpers.http("GET", base .. "/status/404"))
    assert.equal(404, r404.status)
    assert.equal("status 404\n", r404.body)
  end)

  it("forwards X-Forwarded-*, Via and Host, and strips hop-by-hop headers", function()
    local data = helpers.raw(port, "GET /head HTTP/1.1\r\n"
      .. "Host: example.test:8080\r\n"
      .. "Connection: keep-alive, X-Foo\r\n"
      .. "X-Foo: 1\r\n"
      .. "Keep-Alive: timeout=5\r\n"
      .. "TE: trailers\r\n"
      .. "Proxy-Connection: x\r\n"
      .. "X-End-To-End: kept\r\n"
      .. "\r\n", { responses = 1 })
    local res = helpers.parse_responses(data)[1]
    assert.is_table(res, "no response: " .. data)
    assert.equal(200, res.status)
    local fwd = res.body
    assert.matches("^GET /head HTTP/1%.1\r\n", fwd)
    local h = head_headers(fwd)
    assert.equal("127.0.0.1", h["x-forwarded-for"], fwd)
    assert.equal("http", h["x-forwarded-proto"], fwd)
    assert.equal("1.1 moonring", h["via"], fwd)
    assert.equal("example.test:8080", h["host"], fwd)
    assert.equal("kept", h["x-end-to-end"], fwd)
    assert.is_nil(h["x-foo"], "X-Foo (named by Connection) reached the origin:\n" .. fwd)
    assert.is_nil(h["keep-alive"], fwd)
    assert.is_nil(h["te"], fwd)
    assert.is_nil(h["proxy-connection"], fwd)
    -- moonring may send its own Connection header upstream, never the client's
    assert.is_nil((h["connection"] or ""):lower():find("x-foo", 1, true), fwd)
  end)

  it("serves 100 sequential requests on one client keep-alive connection", function()
    local s = assert(helpers.connect(port))
    for i = 1, 100 do
      local res, err = helpers.http("GET", base .. "/ka/" .. i, { sock = s })
      assert.is_table(res, "request " .. i .. ": " .. tostring(err))
      assert.equal(200, res.status)
      assert.equal("ok " .. origin.port .. " GET /ka/" .. i .. "\n", res.body)
    end
    s:close()
  end)

  it("reuses upstream connections (keepalive pool)", function()
    local direct = "http://127.0.0.1:" .. origin.port .. "/count"
    local before = assert(helpers.http("GET", direct))
    local s = assert(helpers.connect(port))
    for i = 1, 50 do
      local res = assert(helpers.http("GET", base .. "/reuse/" .. i, { sock = s }))
      assert.equal(200, res.status)
    end
    s:close()
    local after = assert(helpers.http("GET", direct))
    -- exactly 50 requests reached the origin (no duplicates, no retries)
    assert.equal(tonumber(before.body) + 50, tonumber(after.body))
    -- connections accepted by the origin meanwhile, minus our own direct /count connection
    local opened = tonumber(after.headers["x-connections"]) - tonumber(before.headers["x-connections"]) - 1
    assert.is_true(opened <= 2, ("origin accepted %d connections for 50 sequential requests"):format(opened))
  end)

  it("answers pipelined requests in order", function()
    local data, reason = helpers.raw(port,
      "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /size/7 HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nthird!", { responses = 3, timeout = 5 })
    assert.equal("matched", reason, data)
    local list = helpers.parse_responses(data)
    assert.equal(3, #list)
    assert.equal("ok " .. origin.port .. " GET /first\n", list[1].body)
    assert.equal("abcdefg", list[2].body)
    assert.equal("third!", list[3].body)
  end)

  it("passes a 1 MiB Content-Length request body through exactly", function()
    local body = helpers.pattern(MiB - 3, 7) .. "\0\r\n"
    local res = assert(helpers.http("POST", base .. "/echo", { body = body, timeout = 10 }))
    assert.equal(200, res.status)
    assert.equal(tostring(#body), res.headers["x-body-length"])
    assert.is_true(res.body == body, "echoed body differs")
  end)

  it("passes a chunked request body through exactly", function()
    local data = helpers.raw(port, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhello\r\n1\r\n \r\n6;ext=1\r\nworld!\r\n2000\r\n" .. helpers.pattern(0x2000) .. "\r\n"
      .. "0\r\n\r\n", { responses = 1, timeout = 5 })
    local res = helpers.parse_responses(data)[1]
    assert.is_table(res, "no response: " .. data:sub(1, 300))
    assert.equal(200, res.status)
    assert.equal("hello world!" .. helpers.pattern(0x2000), res.body)
  end)

  it("handles Expect: 100-continue", function()
    local s = assert(helpers.connect(port))
    s:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    local interim = helpers.read(s, { pattern = "\r\n\r\n", timeout = 3 })
    assert.matches("^HTTP/1%.1 100 ", interim)
    s:send("hello")
    local rest = helpers.read(s, { until_fn = function(d)
      return first_final(helpers.parse_responses(interim .. d)) ~= nil
    end, timeout = 5 })
    s:close()
    local res = first_final(helpers.parse_responses(interim .. rest))
    assert.is_table(res, "no final response: " .. rest)
    assert.equal(200, res.status)
    assert.equal("hello", res.body)
  end)

  it("relays a chunked origin response completely", function()
    local res = assert(helpers.http("GET", base .. "/chunked/100000"))
    assert.equal(200, res.status)
    assert.equal(100000, #res.body)
    assert.is_true(res.body == helpers.pattern(100000), "chunked body differs")
  end)

  it("sends no body for HEAD, 204 and 304, and keeps the connection alive", function()
    local s = assert(helpers.connect(port))
    local head = assert(helpers.http("HEAD", base .. "/size/1000", { sock = s }))
    assert.equal(200, head.status)
    assert.equal("1000", head.headers["content-length"])
    local r204 = assert(helpers.http("GET", base .. "/status/204", { sock = s }))
    assert.equal(204, r204.status)
    local r304 = assert(helpers.http("GET", base .. "/status/304", { sock = s }))
    assert.equal(304, r304.status)
    -- a stray body byte after any of them would corrupt this response
    s:send("GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n")
    local data = helpers.read(s, { responses = 1, timeout = 3 })
    s:close()
    assert.matches("^HTTP/1%.1 200 ", data)
    assert.equal("abcdefghij", helpers.parse_responses(data)[1].body)
  end)

  it("streams a 200 MiB download and a 200 MiB upload with bounded memory", function()
    local size = 200 * MiB
    local max_rss = 0
    local function watch(h)
      local rc, peak = helpers.watch_rss(h, mr)
      max_rss = math.max(max_rss, peak)
      return rc
    end

    local dl = helpers.spawn(("curl -sS -o /dev/null -w '%%{http_code} %%{size_download}' --max-time 60 %s"):format(
      helpers.shell_quote(base .. "/size/" .. size)))
    assert.equal(0, watch(dl), dl.log())
    assert.equal("200 " .. size, dl.log())

    local file = helpers.tmpname("upload", ".bin")
    assert.equal(0, select(2, helpers.run(("yes abcdefghijklmnopqrstuvwxy 2>/dev/null | head -c %d > %s"):format(size, file))))
    -- the origin's own checksum of the file is the reference
    local expected, rc = helpers.curl(("--data-binary @%s http://127.0.0.1:%d/sink"):format(file, origin.port))
    assert.equal(0, rc)
    assert.matches("^" .. size .. " %x+\n$", expected)
    local up = helpers.spawn(("curl -sS --max-time 60 --data-binary @%s %s"):format(
      file, helpers.shell_quote(base .. "/sink")))
    local up_rc = watch(up)
    os.remove(file)
    assert.equal(0, up_rc, up.log())
    assert.equal(expected, up.log())

    assert.is_true(max_rss < RSS_LIMIT_KB, ("moonring RSS peaked at %d KiB"):format(max_rss))
    assert.is_true(mr.rss_kb() < RSS_LIMIT_KB, ("moonring RSS after transfers: %d KiB"):format(mr.rss_kb()))
  end)

  it("runs Lua handler routes", function()
    local res = assert(helpers.http("GET", base .. "/lua"))
    assert.equal(200, res.status)
    assert.equal("hello from lua\n", res.body)
    assert.matches("^text/plain", res.headers["content-type"])
    assert.is_nil(res.headers["x-origin"])
  end)

  it("answers 502 quickly when the upstream refuses connections", function()
    local t0 = socket.gettime()
    local res = assert(helpers.http("GET", base .. "/refused", { timeout = 5 }))
    assert.equal(502, res.status)
    assert.is_true(elapsed_since(t0) < 2, "took " .. elapsed_since(t0) .. " s")
  end)

  it("answers 504 when the upstream does not answer within read_timeout", function()
    local t0 = socket.gettime()
    local res = assert(helpers.http("GET", base .. "/hang", { timeout = 6 }))
    local took = elapsed_since(t0)
    assert.equal(504, res.status)
    assert.is_true(took >= 0.9 and took < 3, "took " .. took .. " s")
  end)

  it("lets a response that keeps moving run past read_timeout (the timeout is between reads)", function()
    local t0 = socket.gettime()
    local res = assert(helpers.http("GET", base .. "/drip/150", { timeout = 6 }))
    local took = elapsed_since(t0)
    assert.equal(200, res.status)
    assert.equal("0123456789", res.body)
    assert.is_true(took >= 1.4, "took " .. took .. " s")
  end)

  it("lets an upload that keeps moving run past read_timeout", function()
    local c = assert(socket.tcp())
    c:settimeout(6)
    assert(c:connect("127.0.0.1", port))
    assert(c:send("POST /drip/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"))
    local t0 = socket.gettime()
    for i = 0, 9 do
      socket.sleep(0.15)
      assert(c:send(tostring(i)))
    end
    local line = c:receive("*l")
    c:close()
    assert.is_true(elapsed_since(t0) >= 1.4)
    assert.equal("HTTP/1.1 200 OK", line)
  end)

  it("answers 504 when the upstream stops taking the request body for send_timeout", function()
    local body = helpers.tmpname("stuck", ".bin")
    assert(os.execute("head -c 33554432 /dev/zero > " .. body))
    local t0 = socket.gettime()
    local out = helpers.curl("-o /dev/null -w '%{http_code}' --max-time 20 --data-binary @" .. body ..
      " " .. base .. "/stuck")
    local took = elapsed_since(t0)
    os.remove(body)
    assert.equal("504", out)
    assert.is_true(took >= 0.9 and took < 10, "took " .. took .. " s")
  end)

  it("answers 502 when the upstream resets the connection", function()
    local res = assert(helpers.http("GET", base .. "/reset", { timeout = 5 }))
    assert.equal(502, res.status)
  end)

  it("answers 502 when the upstream sends garbage", function()
    local res = assert(helpers.http("GET", base .. "/garbage", { timeout = 5 }))
    assert.equal(502, res.status)
  end)

  it("answers 502 when the upstream's response head is too large", function()
    local res = assert(helpers.http("GET", base .. "/bigheaders", { timeout = 5 }))
    assert.equal(502, res.status)
    assert.is_nil(res.headers["x-big"])
  end)

  it("retries the next server when the first refuses the connection", function()
    for i = 1, 6 do
      local res = assert(helpers.http("GET", base .. "/retry/" .. i, { timeout = 5 }))
      assert.equal(200, res.status)
      assert.equal("ok " .. origin.port .. " GET /retry/" .. i .. "\n", res.body)
    end
  end)

  it("answers a malformed request with 400 and Connection: close", function()
    local data, reason = helpers.raw(port, "GARBAGE\r\n\r\n", { timeout = 3 })
    assert.matches("^HTTP/1%.1 400 ", data)
    local res = helpers.parse_responses(data)[1]
    assert.equal("close", (res.headers["connection"] or ""):lower())
    assert.equal("closed", reason)
  end)

  it("tunnels WebSocket upgrades", function()
    local s = assert(helpers.connect(port))
    s:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    local head = helpers.read(s, { pattern = "\r\n\r\n", timeout = 3 })
    assert.matches("^HTTP/1%.1 101 ", head)
    assert.matches("\r\n[Uu]pgrade: websocket\r\n", head)
    local frame = "\129\5hello"
    s:send(frame)
    assert.equal(frame, helpers.read(s, { until_bytes = #frame, timeout = 3 }))
    local big = helpers.pattern(100000)
    s:send(big)
    assert.is_true(helpers.read(s, { until_bytes = #big, timeout = 5 }) == big, "100 KB echo differs")
    s:close()
  end)

  it("sustains wrk -c 20 for 2 s without errors", function()
    local res = helpers.wrk(base .. "/", { c = 20, d = "2s" })
    assert.is_true(res.requests > 0, res.output)
    assert.same({ connect = 0, read = 0, write = 0, timeout = 0, status = 0 }, res.errors, res.output)
    assert.is_true(mr.alive(), "moonring died:\n" .. mr.log())
  end)
end)

describe("routing", function()
  local origin, port

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = { { exact = "/only", upstream = "origin" } },
}
]]):format(port, origin.port))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("answers 404 when no route matches", function()
    local ok = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/only"))
    assert.equal(200, ok.status)
    assert.equal("ok " .. origin.port .. " GET /only\n", ok.body)
    for _, path in ipairs({ "/", "/other", "/only/sub", "/onlyx" }) do
      local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. path))
      assert.equal(404, res.status, path)
    end
  end)
end)

describe("limits", function()
  local origin, port

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" }, keepalive = 4 } },
  routes = { { path = "/", upstream = "origin" } },
  limits = {
    header_timeout = "1s",
    max_request_line = "1k",
    max_headers = 20,
    max_header_size = "4k",
    client_max_body_size = "1k",
  },
}
]]):format(port, origin.port))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function status_of(bytes)
    local data = helpers.raw(port, bytes, { responses = 1, timeout = 5 })
    local res = helpers.parse_responses(data)[1]
    return res and res.status, data
  end

  it("times out an incomplete request head (408 or close)", function()
    local t0 = socket.gettime()
    local data, reason = helpers.raw(port, "GET / HTTP/1.1\r\n", { timeout = 5 })
    local took = elapsed_since(t0)
    assert.equal("closed", reason)
    assert.is_true(data == "" or data:match("^HTTP/1%.1 408 ") ~= nil, data)
    assert.is_true(took >= 0.5 and took < 3, "took " .. took .. " s")
  end)

  it("answers 414 for a request line over max_request_line", function()
    local status, data = status_of("GET /" .. ("a"):rep(2000) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(414, status, data)
  end)

  it("answers 431 for more than max_headers headers", function()
    local hs = {}
    for i = 1, 30 do hs[#hs + 1] = ("X-H%d: v\r\n"):format(i) end
    local status, data = status_of("GET / HTTP/1.1\r\nHost: x\r\n" .. table.concat(hs) .. "\r\n")
    assert.equal(431, status, data)
  end)

  it("answers 431 for a header section over max_header_size", function()
    local status, data = status_of("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("b"):rep(5000) .. "\r\n\r\n")
    assert.equal(431, status, data)
  end)

  it("answers 413 for a body over client_max_body_size", function()
    local res = assert(helpers.http("POST", "http://127.0.0.1:" .. port .. "/echo", { body = ("x"):rep(2000) }))
    assert.equal(413, res.status)
    -- within the limit still works
    local ok = assert(helpers.http("POST", "http://127.0.0.1:" .. port .. "/echo", { body = ("y"):rep(1000) }))
    assert.equal(200, ok.status)
    assert.equal(("y"):rep(1000), ok.body)
  end)
end)

describe("graceful stop", function()
  local origin, port, mr

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" }, keepalive = 16 } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(port, origin.port))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("completes in-flight requests on SIGTERM and exits 0", function()
    local socks = {}
    for i = 1, 10 do
      local s = assert(helpers.connect(port))
      assert(s:send("GET /slow/600 HTTP/1.1\r\nHost: x\r\n\r\n"))
      socks[i] = s
    end
    socket.sleep(0.25)
    assert.is_true(mr.signal("TERM"))
    for i, s in ipairs(socks) do
      local data = helpers.read(s, { responses = 1, timeout = 5 })
      s:close()
      local res = helpers.parse_responses(data)[1]
      assert.is_table(res, "in-flight request " .. i .. " got: " .. data)
      assert.equal(200, res.status)
      assert.equal("slow\n", res.body)
    end
    local code = mr.wait(10)
    assert.equal(0, code, "exit code " .. tostring(code) .. "\n" .. mr.log())
    assert.is_false(helpers.port_open(port))
  end)
end)

describe("config check (-t)", function()
  it("accepts a good config with exit 0", function()
    local ok, out = helpers.moonring_check(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:1" } } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(helpers.free_port()))
    assert.is_true(ok, out)
  end)

  it("rejects a config with a syntax error and names the file", function()
    local ok, out, path = helpers.moonring_check("return { listen = { \"127.0.0.1:1\" ")
    assert.is_false(ok, out)
    local name = path:match("[^/]+$")
    assert.is_truthy(out:find(name, 1, true), "output does not name " .. name .. ":\n" .. out)
  end)

  it("rejects a route naming an unknown upstream", function()
    local ok, out = helpers.moonring_check([[
return {
  listen = { "127.0.0.1:1" },
  upstreams = { origin = { servers = { "127.0.0.1:1" } } },
  routes = { { path = "/", upstream = "nope" } },
}
]])
    assert.is_false(ok, out)
  end)
end)
