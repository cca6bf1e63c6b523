-- HTTP/2 to upstreams (src/upstream/h2client.c): upstreams with protocol = "http2", in front of
-- an HTTP/2 origin on python3-h2 (spec/fixtures/h2_server.py), reached by HTTP/1.1 clients (curl)
-- and HTTP/2 clients (curl, h2load, spec/fixtures/h2_client.py). h2c with prior knowledge and h2
-- over TLS with ALPN; multiplexing, the server's stream limit, GOAWAY and REFUSED_STREAM retries,
-- PING on idle connections, trailers both ways, large bodies byte-exact, reloads.
local helpers = require "helpers"

local PY = "/usr/bin/python3 "
local SERVER = PY .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/h2_server.py")
local CLIENT = PY .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/h2_client.py")

local function start_h2(args)
  local port = helpers.free_port()
  local h = helpers.spawn(SERVER .. " " .. port .. " " .. (args or ""), helpers.tmpname("h2srv", ".log"))
  assert(helpers.eventually(function() return h.log():find("listening", 1, true) end, 10), h.log())
  return { port = port, handle = h }
end

local function stats(port)
  local out = helpers.run(("curl -sS --http2-prior-knowledge http://127.0.0.1:%d/stats"):format(port))
  local t = {}
  for k, v in out:gmatch("(%S+) (%d+)") do t[k] = tonumber(v) end
  return t
end

local function h2c(...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = helpers.shell_quote(tostring(a)) end
  local out = helpers.run(CLIENT .. " " .. table.concat(args, " ") .. " 2>&1")
  local facts = { output = out }
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) ?(.*)$")
    if k then facts[k] = facts[k] and (facts[k] .. "|" .. v) or v end
  end
  return facts
end

local function curl(args)
  return (helpers.curl(args))
end

describe("HTTP/2 upstreams", function()
  local up, up2, up_tls, mr, port, pki, big, big_md5, dead_port

  setup(function()
    pki = helpers.pki("h2up-pki")
    pki.make_ca("ca", "h2 upstream test CA")
    pki.leaf("srv", "ec", "/CN=up.test", "ca", "subjectAltName=DNS:up.test,IP:127.0.0.1\n")
    up = start_h2()
    up2 = start_h2("--max-streams 2")
    up_tls = start_h2(("--tls %s %s"):format(pki.path("srv.pem"), pki.path("srv.key")))
    dead_port = helpers.free_port()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  limits = { client_max_body_size = 0 },
  upstreams = {
    h2 = { servers = { "127.0.0.1:%d" }, protocol = "http2", keepalive_timeout = "1s" },
    limited = { servers = { "127.0.0.1:%d" }, protocol = "http2" },
    tls = { servers = { "https://127.0.0.1:%d" }, protocol = "http2", tls = { ca = %q } },
    dead = { servers = { "127.0.0.1:%d" }, protocol = "http2", tries = 1 },
    slow = { servers = { "127.0.0.1:%d" }, protocol = "http2", read_timeout = "300ms" },
  },
  routes = {
    { path = "/limited", upstream = "limited", strip_prefix = true },
    { path = "/tls", upstream = "tls", strip_prefix = true },
    { path = "/dead", upstream = "dead", strip_prefix = true },
    { path = "/slowup", upstream = "slow", strip_prefix = true },
    { path = "/", upstream = "h2" },
  },
}
]]):format(port, up.port, up2.port, up_tls.port, pki.path("ca.pem"), dead_port, up.port))
    big = helpers.tmpname("h2up-big", ".bin")
    helpers.run("head -c 16777216 /dev/urandom > " .. helpers.shell_quote(big))
    big_md5 = helpers.run("md5sum < " .. helpers.shell_quote(big)):match("^(%x+)")
  end)

  teardown(function()
    helpers.stop_all()
    pki.remove()
    os.remove(big)
  end)

  it("translates an HTTP/1.1 request into pseudo-headers and lowercase fields, without hop-by-hop ones", function()
    local out = curl(("-H 'X-Foo: Bar' -H 'Connection: keep-alive, x-hop' -H 'X-Hop: 1' -H 'Keep-Alive: 5' " ..
      "'http://127.0.0.1:%d/headers?a=1&b=2'"):format(port))
    assert.truthy(out:find(":method: GET\n", 1, true), out)
    assert.truthy(out:find(":scheme: http\n", 1, true), out)
    assert.truthy(out:find(":authority: 127.0.0.1:" .. port .. "\n", 1, true), out)
    assert.truthy(out:find(":path: /headers?a=1&b=2\n", 1, true), out)
    assert.truthy(out:find("x-foo: Bar\n", 1, true), out)
    assert.truthy(out:find("x-forwarded-for: 127.0.0.1\n", 1, true), out)
    for _, f in ipairs({ "connection", "keep-alive", "x-hop", "host:", "te:", "transfer-encoding" }) do
      assert.falsy(out:find("\n" .. f, 1, true), f .. " was forwarded:\n" .. out)
    end
    -- TE: trailers is the one TE HTTP/2 carries; a known length goes as content-length
    out = curl(("-H 'TE: trailers' --data-binary hello http://127.0.0.1:%d/headers"):format(port))
    assert.truthy(out:find("\nte: trailers\n", 1, true), out)
    assert.truthy(out:find("\ncontent-length: 5\n", 1, true), out)
    assert.truthy(out:find(":method: POST\n", 1, true), out)
  end)

  it("answers an HTTP/1.1 client with the upstream's response, framed for HTTP/1.1", function()
    local hdrs = curl(("-D - -o /dev/null http://127.0.0.1:%d/size/20"):format(port))
    assert.truthy(hdrs:find("^HTTP/1.1 200 OK\r\n"), hdrs)
    assert.truthy(hdrs:find("\r\nContent%-Length: 20\r\n"), hdrs)
    assert.truthy(hdrs:find("\r\nserver: h2%-fixture\r\n"), hdrs)
    -- no content-length upstream: chunked to an HTTP/1.1 client, with the trailers in the last chunk
    local raw = helpers.raw(port, "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    assert.truthy(raw:find("Transfer%-Encoding: chunked"), raw)
    assert.truthy(raw:find("\r\n0\r\nx%-checksum: abc123\r\ngrpc%-status: 0\r\n\r\n$"), raw)
  end)

  it("carries 16 MiB up and down byte-exact, for HTTP/1.1 and HTTP/2 clients", function()
    local file = helpers.shell_quote(big)
    assert.equal("16777216 " .. big_md5, curl(("--data-binary @%s http://127.0.0.1:%d/sink"):format(file, port)))
    assert.equal("16777216 " .. big_md5,
      curl(("--http2-prior-knowledge --data-binary @%s http://127.0.0.1:%d/sink"):format(file, port)))
    local got = helpers.run(("curl -sS http://127.0.0.1:%d/file%s | md5sum"):format(port, big))
    assert.equal(big_md5, got:match("^(%x+)"))
    got = helpers.run(("curl -sS --http2-prior-knowledge --data-binary @%s http://127.0.0.1:%d/echo | md5sum")
      :format(file, port))
    assert.equal(big_md5, got:match("^(%x+)"))
  end)

  it("carries trailer fields both ways between an HTTP/2 client and an HTTP/2 upstream", function()
    local f = h2c("post_trailers", port, "/echo", "hello", "x-a=1", "grpc-status=0")
    assert.equal("1 200", f.status, f.output)
    assert.equal("hello", f.body, f.output)
    assert.truthy(f.header:find("x-req-trailers: 2", 1, true), f.output)
    assert.truthy(f.trailer and f.trailer:find("x-a: 1", 1, true), f.output)
    assert.truthy(f.trailer:find("grpc-status: 0", 1, true), f.output)
  end)

  it("multiplexes concurrent requests on one connection", function()
    local before = stats(up.port)
    local out = helpers.run(("h2load -n 20 -c 1 -m 20 http://127.0.0.1:%d/slow/300 2>&1"):format(port))
    assert.truthy(out:find("20 succeeded, 0 failed", 1, true), out)
    local after = stats(up.port)
    assert.truthy(after.max_concurrent >= 10, "max_concurrent " .. after.max_concurrent)
    assert.truthy(after.conns - before.conns <= 1, ("%d new connections"):format(after.conns - before.conns))
  end)

  it("keeps to the server's SETTINGS_MAX_CONCURRENT_STREAMS, opening more connections", function()
    local before = stats(up2.port)
    local out = helpers.run(("h2load -n 10 -c 1 -m 10 http://127.0.0.1:%d/limited/slow/300 2>&1"):format(port))
    assert.truthy(out:find("10 succeeded, 0 failed", 1, true), out)
    local after = stats(up2.port)
    assert.equal(2, after.max_concurrent)
    assert.truthy(after.conns - before.conns >= 5, ("%d new connections"):format(after.conns - before.conns))
    assert.equal(10, after.streams - before.streams) -- every request once
  end)

  it("retries a stream a GOAWAY left out, and one refused with REFUSED_STREAM, on another connection", function()
    assert.equal("ok g1", curl(("http://127.0.0.1:%d/goaway-once/g1"):format(port)))
    assert.equal("ok r1", curl(("http://127.0.0.1:%d/refuse-once/r1"):format(port)))
    -- a body already streamed cannot go again: the refusal is the answer
    assert.equal("502", curl(("-o /dev/null -w '%%{http_code}' --data-binary x http://127.0.0.1:%d/refuse-once/r2"):format(port)))
    assert.truthy(mr.log():find("refused the stream (GET /goaway-once/g1)", 1, true), mr.log())
  end)

  it("cancels the upstream streams of clients that leave with hundreds in flight, and serves on", function()
    -- h2load's duration ends with streams open: their upstream streams are cancelled, some of
    -- them before their HEADERS left (nghttp2 then reports them not sent, and closed)
    helpers.run(("h2load -c 4 -m 100 -D 1 http://127.0.0.1:%d/slow/50 2>&1"):format(port))
    helpers.run(("h2load -c 4 -m 100 -D 1 http://127.0.0.1:%d/limited/size/100 2>&1"):format(port))
    assert.is_true(mr.alive())
    assert.equal("slow", curl(("http://127.0.0.1:%d/slow/1"):format(port)))
    assert.equal("0123456789", curl(("http://127.0.0.1:%d/limited/size/10"):format(port)))
  end)

  it("PINGs idle connections and closes them after keepalive_timeout", function()
    curl(("http://127.0.0.1:%d/size/1"):format(port))
    local pings = stats(up.port).pings
    assert.truthy(helpers.eventually(function()
      local s = stats(up.port) -- on a new connection: the idle one was closed
      return s.pings > pings and s.open <= 1
    end, 5), "no PING, or the idle connection stayed")
  end)

  it("reaches an h2 server over TLS chosen by ALPN", function()
    local out = curl(("http://127.0.0.1:%d/tls/headers"):format(port))
    assert.truthy(out:find(":scheme: https\n", 1, true), out)
    local got = helpers.run(("curl -sS --http2-prior-knowledge http://127.0.0.1:%d/tls/file%s | md5sum"):format(port, big))
    assert.equal(big_md5, got:match("^(%x+)"))
  end)

  it("answers 502 when the upstream is down and 504 on a read timeout", function()
    local _, rc = helpers.curl(("-o /dev/null http://127.0.0.1:%d/dead/x"):format(port))
    assert.equal(0, rc)
    assert.equal("502", curl(("-o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/dead/x"):format(port)))
    assert.equal("504", curl(("-o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/slowup/slow/2000"):format(port)))
    -- the stream was cancelled, the connection serves on
    assert.equal("slow", curl(("http://127.0.0.1:%d/slowup/slow/10"):format(port)))
  end)

  it("keeps its upstream connections across a reload", function()
    local h = helpers.run(("h2load -n 40 -c 1 -m 10 http://127.0.0.1:%d/limited/size/10 2>&1"):format(port))
    assert.truthy(h:find("40 succeeded", 1, true), h)
    local before = stats(up2.port)
    mr.signal("HUP")
    assert.truthy(helpers.eventually(function() return mr.log():find("generation 2 serving", 1, true) end, 5), mr.log())
    assert.equal("0123456789", curl(("http://127.0.0.1:%d/limited/size/10"):format(port)))
    local after = stats(up2.port)
    assert.equal(before.conns, after.conns)
  end)
end)
