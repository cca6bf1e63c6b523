-- TLS in the running server: termination (TLS 1.2/1.3, SNI, ALPN, tickets, handshake timeout),
-- mTLS, req.scheme / req.tls, large bodies both ways, upstream TLS (verification, SNI, session
-- reuse, 502 on failure), config errors for certificate files, and certificate reload that keeps
-- established connections. Real clients: openssl s_client and curl. The PKI is made here with the
-- openssl CLI in a temp dir.
local helpers = require "helpers"
local socket = require "socket"

local shq = helpers.shell_quote
local pki = helpers.pki("tls-pki")
local path, make_ca, leaf = pki.path, pki.make_ca, pki.leaf

make_ca("ca", "moonring test CA")
make_ca("other", "another CA")
leaf("a", "rsa", "/O=v1/CN=a.test", "ca", "subjectAltName=DNS:a.test,IP:127.0.0.1\n")
leaf("a2", "rsa", "/O=v2/CN=a.test", "ca", "subjectAltName=DNS:a.test,IP:127.0.0.1\n")
leaf("b", "ec", "/CN=wild.b.test", "ca", "subjectAltName=DNS:*.b.test\n")
leaf("client", "ec", "/O=Example/CN=client", "ca", "extendedKeyUsage=clientAuth\n")
leaf("stranger", "ec", "/CN=stranger", "other", "extendedKeyUsage=clientAuth\n")
helpers.write_file(path("garbage.pem"), "this is not a certificate\n")

-- openssl s_client with a request; returns its whole output (handshake report and response).
local function s_client(port, args, request)
  request = request or "GET /who HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
  local req_path = helpers.tmpname("req")
  helpers.write_file(req_path, request)
  local out = helpers.run(("timeout 20 openssl s_client -connect 127.0.0.1:%d -ign_eof %s < %s 2>&1")
    :format(port, args or "", shq(req_path)))
  os.remove(req_path)
  return out
end

local function subject_of(out)
  return out:match("subject=([^\n]*)")
end

describe("TLS", function()
  local origin, port, mport, plain, admin, conf_path, mr, cport
  local access_log = helpers.tmpname("access", ".log")

  local function config(cert)
    return ([[
local info = function(req)
  local t = req.tls
  if not t then return 200, "scheme=" .. req.scheme .. " tls=nil\n" end
  return 200, ("scheme=%%s protocol=%%s cipher=%%s sni=%%s alpn=%%s reused=%%s subject=%%s fp=%%s\n"):format(
    req.scheme, t.protocol, t.cipher, tostring(t.sni), tostring(t.alpn), tostring(t.session_reused),
    tostring(t.client_subject), tostring(t.client_fingerprint))
end
return {
  workers = 2,
  access_log = %q, access_log_format = "json",
  limits = { header_timeout = "2s", client_max_body_size = "20m" },
  listen = {
    { addr = "127.0.0.1:%d", tls = { certs = { { cert = %q, key = %q }, { cert = %q, key = %q } } } },
    { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q, client_verify = "require", client_ca = %q } },
    "127.0.0.1:%d",
    { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q, session_tickets = false, session_cache = "1m" } },
  },
  admin = { listen = "127.0.0.1:%d" },
  upstreams = {
    origin = { servers = { "127.0.0.1:%d" } },
    plain = { servers = { "127.0.0.1:%d" } },
    good = { servers = { "https://127.0.0.1:%d" }, tls = { ca = %q, sni = "a.test" } },
    resume = { servers = { "https://127.0.0.1:%d" }, tls = { ca = %q }, keepalive = 0 },
    untrusted = { servers = { "https://127.0.0.1:%d" } },
    wrongname = { servers = { "https://127.0.0.1:%d" }, tls = { ca = %q, sni = "wrong.test" } },
    -- localhost is not a name of the certificate: its handshakes fail and the request goes on
    retry = { servers = { "https://localhost:%d", "https://127.0.0.1:%d" }, tls = { ca = %q } },
  },
  routes = {
    { path = "/who", handler = info },
    { path = "/xfp", handler = function(req) return 200, tostring(req:header("x-forwarded-proto")) end },
    { path = "/via-plain/", upstream = "plain", strip_prefix = true },
    { path = "/up/", upstream = "good", strip_prefix = true },
    { path = "/resume/", upstream = "resume", strip_prefix = true },
    { path = "/untrusted/", upstream = "untrusted", strip_prefix = true },
    { path = "/wrongname/", upstream = "wrongname", strip_prefix = true },
    { path = "/retry/", upstream = "retry", strip_prefix = true },
    { path = "/", upstream = "origin" },
  },
}
]]):format(access_log, port, path(cert .. ".pem"), path(cert .. ".key"), path("b.pem"), path("b.key"),
      mport, path("a.pem"), path("a.key"), path("ca.pem"),
      plain, cport, path("a.pem"), path("a.key"), admin, origin.port, plain, port, path("ca.pem"), port, path("ca.pem"), port, port, path("ca.pem"),
      port, port, path("ca.pem"))
  end

  setup(function()
    origin = helpers.start_origin()
    port, mport, plain, admin = helpers.free_port(), helpers.free_port(), helpers.free_port(), helpers.free_port()
    cport = helpers.free_port()
    mr = helpers.start_moonring(config("a"), { wait_port = { plain } })
    conf_path = mr.conf_path
    assert.truthy(helpers.eventually(function()
      return helpers.port_open(port) and helpers.port_open(mport) and helpers.port_open(cport)
    end, 5))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function curl(url_path, args, p)
    return helpers.curl(("--cacert %s --resolve a.test:%d:127.0.0.1 %s https://a.test:%d%s")
      :format(shq(path("ca.pem")), p or port, args or "", p or port, url_path))
  end

  it("terminates TLS 1.2 and TLS 1.3 with ALPN http/1.1", function()
    for _, v in ipairs({ "1_2", "1_3" }) do
      local out = s_client(port, "-tls" .. v .. " -servername a.test -alpn http/1.1")
      assert.truthy(out:find("Protocol  : TLSv" .. v:gsub("_", "."), 1, true), out)
      assert.truthy(out:find("ALPN protocol: http/1.1", 1, true), out)
      assert.truthy(out:find("HTTP/1.1 200", 1, true), out)
      assert.truthy(out:find("scheme=https protocol=TLSv" .. v:gsub("_", "."), 1, true), out)
      assert.truthy(out:find("sni=a.test alpn=http/1.1 reused=false subject=nil fp=nil", 1, true), out)
    end
  end)

  it("selects the certificate by SNI: exact, wildcard, and the default for none or unknown", function()
    assert.truthy(subject_of(s_client(port, "-servername a.test")):find("CN = a.test", 1, true))
    assert.truthy(subject_of(s_client(port, "-servername x.b.test")):find("CN = wild.b.test", 1, true))
    assert.truthy(subject_of(s_client(port, "-noservername")):find("CN = a.test", 1, true))
    assert.truthy(subject_of(s_client(port, "-servername unknown.test")):find("CN = a.test", 1, true))
    -- one label only: y.x.b.test is not covered by *.b.test
    assert.truthy(subject_of(s_client(port, "-servername y.x.b.test")):find("CN = a.test", 1, true))
  end)

  it("resumes sessions from tickets, on TLS 1.3 and TLS 1.2, across workers", function()
    for _, v in ipairs({ "1_3", "1_2" }) do
      local sess = helpers.tmpname("sess")
      local first = s_client(port, ("-tls%s -servername a.test -sess_out %s"):format(v, shq(sess)))
      assert.truthy(first:find("^.*New, TLSv"), first)
      -- Several tries: two workers, and either one must resume the other's tickets.
      for _ = 1, 4 do
        local again = s_client(port, ("-tls%s -servername a.test -sess_in %s"):format(v, shq(sess)))
        assert.truthy(again:find("Reused, TLSv", 1, true), again)
        assert.truthy(again:find("reused=true", 1, true), again)
      end
      os.remove(sess)
    end
  end)

  it("resumes from the shared session cache when tickets are off", function()
    for _, v in ipairs({ "1_2", "1_3" }) do
      local sess = helpers.tmpname("sess")
      local first = s_client(cport, ("-tls%s -servername a.test -sess_out %s"):format(v, shq(sess)))
      assert.truthy(first:find("New, TLSv", 1, true), first)
      -- (TLS 1.3 always sends NewSessionTicket; without tickets it only names the cached session)
      if v == "1_2" then assert.is_nil(first:find("TLS session ticket:", 1, true), first) end
      for _ = 1, 4 do -- either worker: the cache belongs to the listener's context
        local again = s_client(cport, ("-tls%s -servername a.test -sess_in %s"):format(v, shq(sess)))
        assert.truthy(again:find("Reused, TLSv", 1, true), again)
      end
      os.remove(sess)
    end
  end)

  it("sets req.scheme, req.tls and X-Forwarded-Proto", function()
    local out, rc, err = curl("/who")
    assert.equal(0, rc, err)
    assert.truthy(out:find("^scheme=https protocol=TLSv1.3 "), out)
    out = helpers.curl(("http://127.0.0.1:%d/who"):format(plain))
    assert.equal("scheme=http tls=nil\n", out)
    -- https listener -> plain upstream (this server's plain listener) -> the header it got
    out, rc, err = curl("/via-plain/xfp")
    assert.equal(0, rc, err)
    assert.equal("https", out)
    out = helpers.curl(("http://127.0.0.1:%d/via-plain/xfp"):format(plain))
    assert.equal("http", out)
  end)

  it("logs how TLS clients connected in JSON access log lines", function()
    assert.equal(0, select(2, curl("/size/3?tls-log", ("--cert %s --key %s"):format(shq(path("client.pem")), shq(path("client.key"))), mport)))
    helpers.curl(("http://127.0.0.1:%d/size/3?plain-log"):format(plain))
    local line, plain_line
    helpers.eventually(function()
      local log = helpers.read_file(access_log) or ""
      line = log:match("[^\n]*tls%-log[^\n]*")
      plain_line = log:match("[^\n]*plain%-log[^\n]*")
      return line and plain_line
    end, 5)
    assert.truthy(line:find('"tls_protocol":"TLSv1.3","tls_cipher":"TLS_', 1, true), line)
    assert.truthy(line:find('"tls_reused":false,"tls_sni":"a.test","tls_client_subject":"CN=client,O=Example"}', 1, true), line)
    assert.is_nil(plain_line:find("tls_", 1, true), plain_line)
  end)

  it("carries 5 MiB both ways byte-exact, and keeps the connection alive", function()
    local n = 5 * 1024 * 1024
    local out, rc, err = curl("/size/" .. n)
    assert.equal(0, rc, err)
    assert.equal(n, #out)
    assert.truthy(out == helpers.pattern(n), "download differs")
    local body_path = helpers.tmpname("body")
    local body = {}
    for i = 1, n / 4096 do body[i] = ("%08d"):format(i * 7919):rep(512) end
    body = table.concat(body)
    helpers.write_file(body_path, body)
    out, rc, err = curl("/echo", "-H 'Expect:' --data-binary @" .. shq(body_path))
    assert.equal(0, rc, err)
    assert.equal(#body, #out)
    assert.truthy(out == body, "echo differs")
    out, rc, err = curl("/sink", "--data-binary @" .. shq(body_path))
    assert.equal(0, rc, err)
    assert.equal(("%d %s\n"):format(n, helpers.fnv1a32(body)), out)
    os.remove(body_path)
    -- keep-alive: two requests, one connection
    out, rc, err = curl("/size/10", ("-w '%%{num_connects}' https://a.test:%d/size/20"):format(port))
    assert.equal(0, rc, err)
    assert.equal("abcdefghijklmnopqrst" .. "1" .. "abcdefghij" .. "0", out) -- num_connects per URL
  end)

  it("keeps memory bounded for slow TLS readers (backpressure through the engine)", function()
    local before = mr.rss_kb()
    local cmd = {}
    for i = 1, 4 do
      cmd[i] = ("curl -sk --limit-rate 1M --max-time 4 -o /dev/null -w '%%{size_download}\\n' https://127.0.0.1:%d/size/1000000000 &")
        :format(port)
    end
    local h = helpers.spawn("sh -c " .. shq(table.concat(cmd, " ") .. " wait"))
    local code, max_rss = helpers.watch_rss(h, mr)
    assert.equal(0, code)
    local n = 0
    for got in h.log():gmatch("(%d+)\n") do
      n = n + 1
      assert.truthy(tonumber(got) > 1024 * 1024, "a slow reader got only " .. got .. " bytes")
      assert.truthy(tonumber(got) < 100 * 1024 * 1024, "a slow reader got " .. got .. " bytes")
    end
    assert.equal(4, n, h.log())
    -- An origin at full speed would have pushed gigabytes; held per connection: well under 1 MiB.
    -- (ASan's quarantine keeps freed memory resident, as in abuse_spec.)
    local limit = os.getenv("ASAN_OPTIONS") and 400 * 1024 or 48 * 1024
    assert.truthy(max_rss - before < limit, ("RSS grew from %d to %d KiB"):format(before, max_rss))
  end)

  it("tunnels WebSocket upgrades over TLS, on the client side and to a TLS upstream", function()
    local upgrade = "GET %s HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    -- plain client -> TLS upstream (this server's TLS listener) -> origin
    local s = assert(helpers.connect(plain))
    s:send(upgrade:format("/up/ws"))
    local head = helpers.read(s, { pattern = "\r\n\r\n", timeout = 5 })
    assert.matches("^HTTP/1%.1 101 ", head)
    local big = helpers.pattern(300000)
    s:send(big)
    assert.is_true(helpers.read(s, { until_bytes = #big, timeout = 10 }) == big, "echo through the TLS upstream differs")
    s:close()
    -- TLS client -> origin
    local fifo = helpers.tmpname("fifo")
    assert.equal(0, select(2, helpers.run("mkfifo " .. shq(fifo))))
    local h = helpers.spawn(("sh -c %s"):format(shq(("exec openssl s_client -connect 127.0.0.1:%d -servername a.test -quiet < %s")
      :format(port, shq(fifo)))))
    local w = assert(io.open(fifo, "w"))
    w:write(upgrade:format("/ws") .. "echo me over tls\n")
    w:flush()
    helpers.eventually(function() return h.log():find("HTTP/1.1 101 .*echo me over tls\n") end, 10)
    w:close()
    h.stop()
    os.remove(fifo)
  end)

  it("requires a valid client certificate on an mTLS listener", function()
    local out, rc, err = curl("/who", ("--cert %s --key %s"):format(shq(path("client.pem")), shq(path("client.key"))), mport)
    assert.equal(0, rc, err)
    assert.truthy(out:find("subject=CN=client,O=Example fp=" .. ("%x"):rep(64) .. "\n$"), out)
    local fp = helpers.run(("openssl x509 -in %s -outform DER | sha256sum"):format(shq(path("client.pem")))):match("^(%x+)")
    assert.truthy(out:find("fp=" .. fp, 1, true), out)
    out, rc = curl("/who", "", mport)
    assert.are_not.equal(0, rc)
    assert.equal("", out)
    out, rc = curl("/who", ("--cert %s --key %s"):format(shq(path("stranger.pem")), shq(path("stranger.key"))), mport)
    assert.are_not.equal(0, rc)
    assert.equal("", out)
    -- still serving after the refusals
    out, rc, err = curl("/who", ("--cert %s --key %s"):format(shq(path("client.pem")), shq(path("client.key"))), mport)
    assert.equal(0, rc, err)
  end)

  it("verifies upstream certificates: 200 when trusted, 502 with the reason in the log when not", function()
    local out = helpers.curl(("http://127.0.0.1:%d/up/size/10"):format(plain))
    assert.equal("abcdefghij", out)
    local n = 3 * 1024 * 1024 + 7
    out = helpers.curl(("http://127.0.0.1:%d/up/size/%d"):format(plain, n))
    assert.truthy(out == helpers.pattern(n), "download through upstream TLS differs")
    out = helpers.curl(("http://127.0.0.1:%d/up/who"):format(plain))
    assert.truthy(out:find("^scheme=https protocol=TLSv1.3 .* sni=a.test "), out)

    out = helpers.curl(("-w ' %%{http_code}' http://127.0.0.1:%d/untrusted/size/10"):format(plain))
    assert.truthy(out:find(" 502$"), out)
    out = helpers.curl(("-w ' %%{http_code}' http://127.0.0.1:%d/wrongname/size/10"):format(plain))
    assert.truthy(out:find(" 502$"), out)
    local addr = "upstream https://127.0.0.1:" .. port .. ": "
    helpers.eventually(function()
      local log = mr.log()
      return log:find(addr .. "TLS: certificate verify failed: unable to get local issuer certificate", 1, true)
         and log:find(addr .. "TLS: certificate verify failed: hostname mismatch", 1, true)
    end, 5)
  end)

  it("retries another server after a failed upstream handshake", function()
    for _ = 1, 6 do
      local out = helpers.curl(("-w ' %%{http_code}' http://127.0.0.1:%d/retry/size/10"):format(plain))
      assert.equal("abcdefghij 200", out)
    end
    helpers.eventually(function()
      return mr.log():find("upstream https://localhost:" .. port .. ": TLS: certificate verify failed: hostname mismatch", 1, true)
    end, 5)
  end)

  it("reuses upstream TLS sessions on new connections", function()
    local reused = 0
    for _ = 1, 8 do
      local out = helpers.curl(("http://127.0.0.1:%d/resume/who"):format(plain))
      assert.truthy(out:find("^scheme=https"), out)
      if out:find("reused=true", 1, true) then reused = reused + 1 end
    end
    -- keepalive = 0: every request is a new connection; only each worker's first is a full one
    assert.truthy(reused >= 6, "resumed " .. reused .. " of 8")
  end)

  it("closes a client that never finishes the handshake", function()
    local c = assert(helpers.connect(port, { timeout = 10 }))
    c:send("\22\3\1\0\200\1\0") -- the start of a ClientHello, then nothing
    local t0 = socket.gettime()
    local data, err = c:receive("*a")
    local waited = socket.gettime() - t0
    c:close()
    assert.equal("", data or "")
    assert.truthy(err == nil or err == "closed", tostring(err))
    assert.truthy(waited > 0.5 and waited < 9, "closed after " .. waited .. " s")
    -- a plain HTTP request on the TLS port is refused, not answered in clear text
    local out = helpers.raw(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 5 })
    assert.is_nil((out or ""):find("HTTP/1.1", 1, true))
  end)

  it("refuses bad certificate files, naming the file, the line and the key", function()
    local function check(tls)
      local ok, out = helpers.moonring_check(([[
return {
  listen = { { addr = "127.0.0.1:1",
               tls = %s } },
  routes = { { handler = function() return 200 end } },
}]]):format(tls))
      assert.is_false(ok)
      return out
    end
    local out = check(("{ cert = %q, key = %q }"):format(path("missing.pem"), path("a.key")))
    assert.truthy(out:find(":3: listen[1].tls.cert: " .. path("missing.pem") .. ": cannot read (No such file or directory)", 1, true), out)
    out = check(("{ cert = %q, key = %q }"):format(path("garbage.pem"), path("a.key")))
    assert.truthy(out:find(":3: listen[1].tls.certs[1].cert: " .. path("garbage.pem") .. ": ", 1, true), out)
    out = check(("{ cert = %q,\n key = %q }"):format(path("a.pem"), path("b.key")))
    assert.truthy(out:find(":3: listen[1].tls.certs[1]: key " .. path("b.key") .. " does not match certificate " .. path("a.pem"), 1, true), out)
    out = check(("{ cert = %q, key = %q, client_verify = \"require\" }"):format(path("a.pem"), path("a.key")))
    assert.truthy(out:find(":3: listen[1].tls.client_ca: required when client_verify is \"require\"", 1, true), out)
  end)

  it("serves a reloaded certificate to new handshakes while an established connection keeps working", function()
    local fifo = helpers.tmpname("fifo")
    assert.equal(0, select(2, helpers.run("mkfifo " .. shq(fifo))))
    local h = helpers.spawn(("sh -c %s"):format(shq(("exec openssl s_client -connect 127.0.0.1:%d -servername a.test -quiet < %s")
      :format(port, shq(fifo)))))
    local w = assert(io.open(fifo, "w"))
    w:write("GET /who HTTP/1.1\r\nHost: a.test\r\n\r\n")
    w:flush()
    helpers.eventually(function() return h.log():find("scheme=https", 1, true) end, 10)
    assert.truthy(subject_of(s_client(port, "-servername a.test")):find("O = v1", 1, true))

    helpers.write_file(conf_path, config("a2"))
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(200, res.status, res.body)
    helpers.eventually(function()
      return subject_of(s_client(port, "-servername a.test")):find("O = v2", 1, true)
    end, 10)

    -- the connection made before the reload still answers (on its old certificate)
    w:write("GET /size/5 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    w:flush()
    w:close()
    assert.equal(0, h.wait(10))
    local log = h.log()
    assert.truthy(log:find("scheme=https", 1, true), log)
    assert.truthy(log:find("HTTP/1.1 200 OK.-\r\n\r\nabcde"), log)
    os.remove(fifo)
  end)
end)

describe("TLS listener with limits.max_connections_per_ip", function()
  local port
  setup(function()
    port = helpers.free_port()
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } } },
  routes = { { path = "/", handler = function(req) return 200, "ok\n" end } },
  limits = { max_connections_per_ip = 2 },
}
]]):format(port, path("a.pem"), path("a.key")))
    helpers.sleep(0.2) -- the start probe's connection closes on the proxy's side
  end)
  teardown(function()
    helpers.stop_all()
    pki.remove()
  end)

  it("refuses the connection over the limit before its handshake, and serves within it", function()
    local a = assert(helpers.connect(port))
    local b = assert(helpers.connect(port))
    helpers.sleep(0.2)
    local c = assert(helpers.connect(port))
    c:settimeout(3)
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.truthy(err == "closed" or err:find("reset", 1, true), err)
    c:close()
    a:close()
    b:close()
    helpers.eventually(function()
      return s_client(port, "-servername a.test", "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        :find("HTTP/1.1 200 OK", 1, true)
    end, 5)
  end)
end)
