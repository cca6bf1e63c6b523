-- TLS from Lua through the real binary: sock:sslhandshake on cosockets (verification, server
-- name, session reuse, keep-alive pooling of TLS connections) and moonring.http.request with
-- https:// URLs. The TLS servers are a second moonring instance with TLS listeners in front of
-- mr-origin; the PKI is made here with the openssl CLI in a temp dir.
local helpers = require "helpers"

local pki = helpers.pki("luatls-pki")
local path, make_ca = pki.path, pki.make_ca
local function leaf(name, subj, ca, san) pki.leaf(name, "ec", subj, ca, "subjectAltName=" .. san .. "\n") end

make_ca("ca", "moonring lua test CA")
make_ca("other", "untrusted CA")
leaf("a", "/CN=a.test", "ca", "DNS:a.test,DNS:localhost,IP:127.0.0.1")
leaf("o", "/CN=a.test", "other", "DNS:a.test,DNS:localhost,IP:127.0.0.1")

describe("lua TLS I/O", function()
  local origin, front, mr, port, tport, uport, tls12, pport

  local function get(p)
    local res = helpers.http("GET", "http://127.0.0.1:" .. port .. p, { timeout = 30 })
    assert(res, "no response for " .. p)
    return res
  end

  local function fields(p)
    local res = get(p)
    assert.equal(200, res.status, res.body)
    local f = {}
    for x in (res.body .. "|"):gmatch("(.-)|") do f[#f + 1] = x end
    return f
  end

  setup(function()
    origin = helpers.start_origin()
    tport, uport, tls12, pport = helpers.free_port(), helpers.free_port(), helpers.free_port(), helpers.free_port()
    front = helpers.start_moonring(([[
return {
  workers = 1,
  listen = {
    { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } },
    { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } },
    { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q, protocols = { "TLSv1.2" } } },
    "127.0.0.1:%d",
  },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(tport, path("a.pem"), path("a.key"), uport, path("o.pem"), path("o.key"),
      tls12, path("a.pem"), path("a.key"), pport, origin.port))
    assert(helpers.eventually(function()
      return helpers.port_open(uport) and helpers.port_open(tls12) and helpers.port_open(pport)
    end, 10))

    port = helpers.free_port()
    mr = helpers.start_moonring(([[
local moonring = require "moonring"
local TP, UP, T12, OP, PP = %d, %d, %d, %d, %d

-- One HTTP/1.1 exchange over a connected socket; returns status, body.
local function exchange(s, target, host)
  assert(s:send("GET " .. target .. " HTTP/1.1\r\nHost: " .. (host or "a.test") .. "\r\n\r\n"))
  local status = tonumber(assert(s:receive("*l")):match("^HTTP/1%%.1 (%%d+)"))
  local len
  while true do
    local line = assert(s:receive("*l"))
    if line == "" then break end
    local v = line:lower():match("^content%%-length:%%s*(%%d+)")
    if v then len = tonumber(v) end
  end
  return status, assert(s:receive(len))
end

local function tls_sock(p, name, verify, session, timeout)
  local s = moonring.tcp()
  s:settimeout(timeout or 5000)
  assert(s:connect("127.0.0.1", p))
  local sess, err = s:sslhandshake(session, name, verify)
  return s, sess, err
end

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  lua = { ssl_trusted_certificate = %q, ssl_verify_depth = 4 },
  routes = {
    { path = "/cs/basic", handler = function()
        local s, sess, err = tls_sock(TP, "a.test")
        if not sess then return 502, err end
        local status, body = exchange(s, "/size/1000")
        local reused = s:getreusedtimes()
        s:close()
        return 200, table.concat({ status, #body, body:sub(1, 5), type(sess), reused }, "|")
      end },
    { path = "/cs/errors", handler = function()
        local out = {}
        out[1] = select(3, tls_sock(UP, "a.test"))                  -- untrusted CA
        out[2] = select(3, tls_sock(TP, "wrong.test"))              -- name mismatch
        local s, ok = tls_sock(UP, "a.test", false, false)          -- verify off: works
        out[3] = tostring(ok)
        out[4] = ok and exchange(s, "/size/10") or "-"
        if ok then s:close() end
        -- plain ports: one answers the ClientHello with a 400 and closes, one waits for more
        local t0 = moonring.now()
        out[5] = select(3, tls_sock(PP, "a.test"))
        out[6] = string.format("%%.1f", moonring.now() - t0)
        t0 = moonring.now()
        out[7] = select(3, tls_sock(OP, "a.test", nil, nil, 500))
        out[8] = string.format("%%.1f", moonring.now() - t0)
        local c = moonring.tcp()
        out[9] = select(2, c:sslhandshake(nil, "a.test"))           -- not connected
        return 200, table.concat(out, "|")
      end },
    { path = "/cs/resume", handler = function(req)
        local p = req:header("x-port") == "12" and T12 or TP
        local s, sess = tls_sock(p, "a.test")
        assert(sess, "first handshake")
        local first = s:ssl_reused()
        exchange(s, "/size/10")   -- reads the TLS 1.3 tickets that follow the handshake
        s:close()
        local s2, sess2, err = tls_sock(p, "a.test", nil, sess)
        if not sess2 then return 502, err end
        local second = s2:ssl_reused()
        local status = exchange(s2, "/size/10")
        s2:close()
        -- a session made without verification is not offered to a verifying handshake, nor
        -- to another server name
        local s3, sess3 = tls_sock(p, "a.test", false)
        exchange(s3, "/size/10")
        s3:close()
        local s4 = assert(tls_sock(p, "a.test", true, sess3))
        local third = s4:ssl_reused()
        s4:close()
        local s5 = tls_sock(p, "localhost", true, sess)
        local fourth = s5:ssl_reused()
        s5:close()
        return 200, table.concat({ tostring(first), tostring(second), status, tostring(third), tostring(fourth) }, "|")
      end },
    { path = "/cs/keepalive", handler = function()
        local out = {}
        for i = 1, 3 do
          local s, sess, err = tls_sock(TP, "a.test")
          if not sess then return 502, err end
          out[#out + 1] = s:getreusedtimes()
          out[#out + 1] = exchange(s, "/size/10")
          assert(s:setkeepalive(10000, 4))
        end
        -- another server name or no verification never takes that connection
        local s, sess = tls_sock(TP, "localhost")
        assert(sess)
        out[#out + 1] = s:getreusedtimes()
        s:close()
        s, sess = tls_sock(TP, "a.test", false)
        assert(sess)
        out[#out + 1] = s:getreusedtimes()
        s:close()
        return 200, table.concat(out, "|")
      end },
    { path = "/http/get", handler = function()
        local out = {}
        for _, u in ipairs({ "https://localhost:" .. TP .. "/size/100", "https://127.0.0.1:" .. TP .. "/chunked/100000" }) do
          local res, err = moonring.http.request{ url = u }
          if not res then return 502, err end
          out[#out + 1] = res.status .. ":" .. #res.body .. ":" .. tostring(res.headers["transfer-encoding"])
        end
        local res, err = moonring.http.request{ method = "POST", url = "https://localhost:" .. TP .. "/echo",
          body = string.rep("x", 600000) }
        if not res then return 502, err end
        out[#out + 1] = res.status .. ":" .. #res.body .. ":" .. tostring(res.body == string.rep("x", 600000))
        return 200, table.concat(out, "|")
      end },
    { path = "/http/reuse", handler = function()
        for i = 1, 3 do
          local res, err = moonring.http.request{ url = "https://localhost:" .. TP .. "/size/10" }
          if not res then return 502, err end
        end
        local s = moonring.tcp()
        assert(s:connect("localhost", TP, { pool = "https://localhost:" .. TP }))
        local n = s:getreusedtimes()
        local sess = s:sslhandshake(false, "localhost")
        local status = exchange(s, "/size/10")
        s:close()
        return 200, n .. "|" .. tostring(sess) .. "|" .. status
      end },
    { path = "/http/errors", handler = function()
        local out = {}
        out[1] = select(2, moonring.http.request{ url = "https://localhost:" .. UP .. "/size/10" })
        local res = moonring.http.request{ url = "https://localhost:" .. UP .. "/size/10", ssl_verify = false }
        out[2] = res and res.status or "-"
        local t0 = moonring.now()
        out[3] = select(2, moonring.http.request{ url = "https://127.0.0.1:" .. PP .. "/size/10", timeout = 10 })
        out[4] = string.format("%%.1f", moonring.now() - t0)
        t0 = moonring.now()
        out[5] = select(2, moonring.http.request{ url = "https://127.0.0.1:" .. OP .. "/size/10", timeout = 0.5 })
        out[6] = string.format("%%.1f", moonring.now() - t0)
        return 200, table.concat(out, "|")
      end },
  },
}
]]):format(tport, uport, tls12, origin.port, pport, port, path("ca.pem")))
  end)

  teardown(function()
    helpers.stop_all()
    pki.remove()
  end)

  it("does sslhandshake and an HTTP exchange over a cosocket", function()
    local f = fields("/cs/basic")
    assert.same({ "200", "1000", "abcde", "cdata", "0" }, { f[1], f[2], f[3], f[4], f[5] })
  end)

  it("fails verification with nil, err and succeeds with verify = false", function()
    local f = fields("/cs/errors")
    assert.matches("^certificate verify failed: unable to get local issuer certificate", f[1])
    assert.matches("^certificate verify failed: hostname mismatch", f[2])
    assert.equal("true", f[3])
    assert.equal("200", f[4])
    assert.equal("wrong version number", f[5]) -- the plain server's "HTTP/1.1 400" is no TLS record
    assert.is_true(tonumber(f[6]) < 3, f[6])
    assert.equal("timeout", f[7])
    assert.is_true(tonumber(f[8]) < 3, f[8])
    assert.equal("closed", f[9])
  end)

  it("resumes a session passed to sslhandshake (TLS 1.3 and 1.2)", function()
    assert.same({ "false", "true", "200", "false", "false" }, fields("/cs/resume"))
    local res = helpers.http("GET", "http://127.0.0.1:" .. port .. "/cs/resume", { headers = { ["X-Port"] = "12" } })
    assert.equal("false|true|200|false|false", res.body)
  end)

  it("pools TLS connections apart by server name and verification", function()
    assert.same({ "0", "200", "1", "200", "2", "200", "0", "0" }, fields("/cs/keepalive"))
  end)

  it("makes https requests with moonring.http: Content-Length, chunked, a 600 KB POST", function()
    assert.same({ "200:100:nil", "200:100000:chunked", "200:600000:true" }, fields("/http/get"))
  end)

  it("keeps https connections alive in the worker's pool", function()
    local f = fields("/http/reuse")
    assert.is_true(tonumber(f[1]) >= 2, f[1])
    assert.same({ "true", "200" }, { f[2], f[3] })
  end)

  it("reports https verification failures and plain ports as nil, err without hanging", function()
    local f = fields("/http/errors")
    assert.matches("^certificate verify failed", f[1])
    assert.equal("200", f[2])
    assert.equal("wrong version number", f[3])
    assert.is_true(tonumber(f[4]) < 3, f[4])
    assert.equal("timeout", f[5])
    assert.is_true(tonumber(f[6]) < 3, f[6])
  end)

  it("refuses an unreadable lua.ssl_trusted_certificate naming file, line and key", function()
    local ok, out = helpers.moonring_check(([[
return {
  listen = { "127.0.0.1:%d" },
  lua = {
    ssl_trusted_certificate = "/nonexistent/ca.pem",
  },
  routes = { { path = "/", handler = function() return 200 end } },
}
]]):format(helpers.free_port()))
    assert.is_false(ok)
    assert.matches(":4: lua%.ssl_trusted_certificate: /nonexistent/ca%.pem: cannot read", out)
    ok, out = helpers.moonring_check(([[
return {
  listen = { "127.0.0.1:%d" },
  lua = { ssl_trusted_certificate = %q },
  routes = { { path = "/", handler = function() return 200 end } },
}
]]):format(helpers.free_port(), path("a.ext")))
    assert.is_false(ok)
    assert.matches(":3: lua%.ssl_trusted_certificate: ", out)
  end)
end)
