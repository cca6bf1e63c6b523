-- HTTP/2 from clients (src/session/h2.c), end to end with real clients: curl (--http2 over TLS
-- with ALPN, --http2-prior-knowledge on plain TCP), nghttp, h2load, and python3-h2 for raw frames
-- (spec/fixtures/h2_client.py). Every stream is a request of the same core as HTTP/1.1: routes,
-- Lua, upstreams, the access log.
local helpers = require "helpers"

local H2C = "/usr/bin/python3 " .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/h2_client.py")

local function h2c(...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = helpers.shell_quote(tostring(a)) end
  local out = helpers.run(H2C .. " " .. table.concat(args, " ") .. " 2>&1")
  local facts = {}
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) ?(.*)$")
    if k then facts[k] = facts[k] and (facts[k] .. "|" .. v) or v end
  end
  facts.output = out
  return facts
end

local function curl(args)
  local out, rc, err = helpers.curl(args)
  return out, rc, err
end

describe("HTTP/2", function()
  local origin, mr, port, tport, plain_port, pki, log, big

  setup(function()
    origin = helpers.start_origin()
    port, tport, plain_port = helpers.free_port(), helpers.free_port(), helpers.free_port()
    pki = helpers.pki("h2-pki")
    pki.make_ca("ca", "h2 test CA")
    pki.leaf("srv", "ec", "/CN=a.test", "ca", "subjectAltName=DNS:a.test\n")
    log = helpers.tmpname("h2-access", ".log")
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  access_log = %q,
  listen = { "127.0.0.1:%d",
             { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } },
             { addr = "127.0.0.1:%d", http2 = false } },
  limits = { client_max_body_size = 0, send_timeout = "1s" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/lua", handler = function(req)
        return 200, table.concat({ req.version, req.method, req.path, req.host, tostring(req:header("x-a")) }, " ") .. "\n"
      end },
    { path = "/tr", strip_prefix = true, upstream = "origin", filters = { {
        on_body = function(res, chunk, eof)
          if eof then res:set_trailer("x-sum", (res:trailer("x-checksum") or "none") .. "!") end
          return chunk
        end } } },
    { path = "/", upstream = "origin", filters = { { on_response = function(res) res:set_header("x-filtered", "1") end } } },
  },
}
]]):format(log, port, tport, pki.path("srv.pem"), pki.path("srv.key"), plain_port, origin.port), { wait_port = port })
    big = helpers.tmpname("h2-big", ".bin")
    helpers.run("head -c 16777216 /dev/urandom > " .. helpers.shell_quote(big))
  end)

  teardown(function()
    helpers.stop_all()
    pki.remove()
    os.remove(big)
  end)

  it("serves a Lua handler and a proxied route over h2c with prior knowledge", function()
    local out = curl(("--http2-prior-knowledge -H 'X-A: 1' http://127.0.0.1:%d/lua/x?q=1"):format(port))
    assert.equal("2 GET /lua/x 127.0.0.1 1\n", out)
    local hdrs = curl(("--http2-prior-knowledge -sD - -o /dev/null http://127.0.0.1:%d/size/12"):format(port))
    assert.truthy(hdrs:find("^HTTP/2 200 ?\r\n"), hdrs)
    assert.truthy(hdrs:find("\r\nx%-filtered: 1\r\n"), hdrs)
    assert.truthy(hdrs:find("\r\ncontent%-length: 12\r\n"), hdrs)
    assert.falsy(hdrs:lower():find("connection:", 1, true), hdrs)
    assert.truthy(helpers.eventually(function()
      return (helpers.read_file(log) or ""):find('"GET /lua/x?q=1 HTTP/2.0" 200', 1, true)
    end, 3))
  end)

  it("negotiates h2 by ALPN on TLS, and still serves HTTP/1.1 there", function()
    local args = ("--cacert %s --resolve a.test:%d:127.0.0.1 https://a.test:%d/lua/t"):format(pki.path("ca.pem"), tport, tport)
    assert.equal("2 GET /lua/t a.test 1\n", (curl("--http2 -H 'X-A: 1' " .. args)))
    assert.equal("1.1 GET /lua/t a.test nil\n", (curl("--http1.1 " .. args)))
  end)

  it("keeps HTTP/1.1 only on a listener with http2 = false", function()
    local _, rc = curl(("--http2-prior-knowledge -o /dev/null http://127.0.0.1:%d/lua/x"):format(plain_port))
    assert.is_not.equal(0, rc)
    assert.equal("1.1 GET /lua/x 127.0.0.1 nil\n", (curl(("http://127.0.0.1:%d/lua/x"):format(plain_port))))
  end)

  it("streams 16 MiB up and down on one stream, byte-exact", function()
    local want = helpers.run("md5sum < " .. helpers.shell_quote(big)):match("^(%x+)")
    local up = curl(("--http2-prior-knowledge --data-binary @%s http://127.0.0.1:%d/sink"):format(big, port))
    assert.truthy(up:match("^16777216 "), up)
    local down = helpers.run(("curl -sS --http2-prior-knowledge http://127.0.0.1:%d/size/16777216 | wc -c"):format(port))
    assert.equal("16777216", down:match("%d+"))
    -- the body the origin echoes back is the one sent
    local echoed = helpers.run(("head -c 900000 %s | curl -sS --http2-prior-knowledge --data-binary @- " ..
      "http://127.0.0.1:%d/echo | md5sum"):format(big, port))
    local sent = helpers.run(("head -c 900000 %s | md5sum"):format(big))
    assert.equal(sent:match("^(%x+)"), echoed:match("^(%x+)"))
    assert.truthy(want)
  end)

  it("runs 100 concurrent streams of 1 MiB on one connection, each byte-exact", function()
    local f = h2c("streams", port, 100, 1048576)
    assert.equal("100", f.streams, f.output)
    assert.equal("100", f.exact, f.output)
  end)

  it("answers h2load's multiplexed load without a failure", function()
    local out = helpers.run(("h2load -n 2000 -c 4 -m 50 http://127.0.0.1:%d/size/12 2>&1"):format(port))
    assert.truthy(out:find("2000 succeeded, 0 failed", 1, true), out)
  end)

  it("carries an HTTP/1.1 upstream's trailer fields to the h2 client", function()
    local f = h2c("get", port, "/trailers")
    assert.equal("1 200", f.status, f.output)
    assert.equal("hello", f.body)
    assert.truthy(f.trailer and f.trailer:find("x-checksum: abc123", 1, true), f.output)
    assert.truthy(f.trailer:find("grpc-status: 0", 1, true), f.output)
  end)

  it("lets a filter read and set trailer fields (res:trailer, res:set_trailer)", function()
    local f = h2c("get", port, "/tr/trailers")
    assert.equal("hello", f.body, f.output)
    assert.truthy(f.trailer and f.trailer:find("x-sum: abc123!", 1, true), f.output)
  end)

  it("joins cookie crumbs and keeps :authority as Host for an HTTP/1.1 upstream", function()
    local f = h2c("cookies", port)
    assert.equal("1 200", f.status, f.output)
    assert.truthy(f.body:find("cookie: a=1; b=2; c=3", 1, true), f.body)
    assert.truthy(f.body:lower():find("host: 127.0.0.1:" .. port, 1, true), f.body)
  end)

  it("refuses connection-specific fields (RFC 9113 8.2.2) as stream errors, the connection going on", function()
    for _, h in ipairs({ { "connection", "keep-alive" }, { "transfer-encoding", "chunked" }, { "te", "gzip" },
                         { "upgrade", "websocket" }, { "keep-alive", "1" }, { "proxy-connection", "x" } }) do
      local f = h2c("header", port, h[1], h[2])
      assert.truthy(f.reset and f.reset:match("^1 1$"), h[1] .. ": " .. f.output) -- PROTOCOL_ERROR
    end
    assert.equal("1 200", h2c("header", port, "te", "trailers").status)
  end)

  it("refuses a body that does not match its content-length before it reaches the upstream", function()
    local before = tonumber(assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count")).body)
    local f = h2c("cl_mismatch", port)
    assert.truthy(f.reset, f.output)
    local after = tonumber(assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count")).body)
    assert.is_true(after - before <= 1, "the upstream got the mismatched body")
  end)

  it("answers 431 to an oversized header list and keeps serving", function()
    local f = h2c("big_headers", port, 400)
    assert.equal("1 431", f.status, f.output)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
  end)

  it("ends a Rapid Reset (CVE-2023-44487) with GOAWAY, and keeps serving other connections", function()
    local f = h2c("rapid_reset", port, 3000)
    assert.truthy(f.goaway or f.closed == "1", f.output)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
    assert.is_true(mr.alive())
  end)

  it("ends a CONTINUATION flood with GOAWAY", function()
    local f = h2c("continuation_flood", port, 2000)
    assert.truthy(f.goaway or f.closed == "1", f.output)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
  end)

  it("ends a PING flood whose acknowledgements are never read", function()
    local f = h2c("ping_flood", port, 1000000)
    assert.truthy(f.goaway or f.closed == "1", f.output)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
  end)

  it("ends an empty-DATA flood with GOAWAY (ENHANCE_YOUR_CALM)", function()
    local f = h2c("empty_data_flood", port, 5000)
    assert.truthy(f.goaway and f.goaway:match("^11 "), f.output)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
  end)

  it("resets a stream whose client never opens its window, after limits.send_timeout", function()
    local f = h2c("zero_window", port, "/size/100000")
    assert.equal("1 200", f.status, f.output)
    assert.equal("1 8", f.reset, f.output) -- CANCEL
    assert.is_true(tonumber(f.seconds) < 5)
    assert.equal("1 200", h2c("get", port, "/size/1").status)
  end)

  it("answers DATA on an idle stream with a connection error (RFC 9113 5.1)", function()
    local f = h2c("data_on_idle", port)
    assert.truthy(f.goaway and f.goaway:match("^1 "), f.output) -- PROTOCOL_ERROR
  end)
end)

describe("HTTP/2 connections across a reload and a graceful stop", function()
  local mr, port, origin

  local function conf(version)
    return ([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = { { path = "/v", handler = function() return 200, %q end }, { path = "/", upstream = "origin" } },
}
]]):format(port, origin.port, version)
  end

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    mr = helpers.start_moonring(conf("one"), { wait_port = port })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("keeps an h2 connection serving through a reload; new streams take the new generation", function()
    local out = helpers.tmpname("h2-reload", ".log")
    local client = helpers.spawn(H2C .. " two_requests " .. port .. " /v 1.2", out)
    assert.truthy(helpers.eventually(function() return client.log():find("body 1 one", 1, true) end, 5), client.log())
    helpers.write_file(mr.conf_path, conf("two"))
    mr.signal("HUP")
    assert.truthy(helpers.eventually(function() return mr.log():find("reload: generation 2", 1, true) end, 5), mr.log())
    assert.equal(0, client.wait(10))
    local log = client.log()
    assert.truthy(log:find("body 3 two", 1, true), log)
    assert.falsy(log:find("goaway", 1, true), log)
  end)

  it("finishes a stream in flight at a graceful stop, with GOAWAY, and exits 0", function()
    -- nghttp, since python3-h2 treats any GOAWAY as the end of the connection
    local out = helpers.tmpname("h2-stop", ".log")
    local client = helpers.spawn(("nghttp -v http://127.0.0.1:%d/slow/800"):format(port), out)
    assert.truthy(helpers.eventually(function() return client.log():find("send HEADERS frame", 1, true) end, 5))
    helpers.sleep(0.2)
    assert.equal(0, mr.stop("TERM", 10))
    assert.equal(0, client.wait(10))
    local log = client.log()
    assert.truthy(log:find(":status: 200", 1, true), log)
    assert.truthy(log:find("slow", 1, true), log)
    assert.truthy(log:find("recv GOAWAY frame", 1, true), log)
  end)
end)
