-- The TLS engine (src/tls): contexts, SNI, ALPN, versions, mTLS, tickets, upstream verification
-- and bulk data, driven without sockets through the core shared library (MOONRING_FFI_LIB,
-- default <repo>/build/libmoonring_ffi.so). Test certificates are made with the openssl CLI.
local ffi = require "ffi"

local helpers = require "helpers"
local lib, lib_path = helpers.core_lib_or_rerun("tls engine")
if not lib then return end
pcall(ffi.cdef, [[
typedef struct mr_tls_ctx mr_tls_ctx_t;
typedef struct mr_tls_conn mr_tls_conn_t;
typedef struct mr_tls_session mr_tls_session_t;
typedef struct { const char *cert_path; const char *key_path; } mr_tls_cert_conf_t;
typedef struct {
  const char *where;
  const mr_tls_cert_conf_t *certs; size_t ncerts;
  const char *min_protocol, *max_protocol, *ciphers, *ciphersuites;
  const char *const *alpn; size_t nalpn;
  int client_verify; const char *client_ca; int verify_depth;
  long session_cache; bool no_tickets; long session_timeout;
} mr_tls_server_conf_t;
typedef struct {
  const char *where; bool verify; const char *ca_file; const char *cert_path, *key_path;
  const char *min_protocol, *max_protocol, *ciphers, *ciphersuites;
  const char *const *alpn; size_t nalpn;
  int verify_depth;
} mr_tls_client_conf_t;
int mr_tls_server_ctx_new(const mr_tls_server_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen);
int mr_tls_client_ctx_new(const mr_tls_client_conf_t *conf, mr_tls_ctx_t **out, char *err, size_t errlen);
void mr_tls_ctx_unref(mr_tls_ctx_t *ctx);
void mr_tls_rotate_ticket_keys(void);
bool mr_tls_ktls_available(void);
mr_tls_conn_t *mr_tls_conn_new(mr_tls_ctx_t *ctx, bool server, const char *sni);
void mr_tls_conn_free(mr_tls_conn_t *t);
int mr_tls_feed(mr_tls_conn_t *t, const void *cipher, size_t n);
int mr_tls_read(mr_tls_conn_t *t, void *plain, size_t cap, size_t *got);
int mr_tls_write(mr_tls_conn_t *t, const void *plain, size_t n, size_t *taken);
size_t mr_tls_pending_out(const mr_tls_conn_t *t);
int mr_tls_take_out(mr_tls_conn_t *t, void *buf, size_t cap, size_t *got);
bool mr_tls_handshake_done(const mr_tls_conn_t *t);
bool mr_tls_read_pending(const mr_tls_conn_t *t);
int mr_tls_shutdown(mr_tls_conn_t *t);
const char *mr_tls_protocol(const mr_tls_conn_t *t);
const char *mr_tls_error(const mr_tls_conn_t *t);
void mr_tls_session_free(mr_tls_session_t *s);
int mr_tls_test_pair(mr_tls_ctx_t *server_ctx, mr_tls_ctx_t *client_ctx, const char *sni, size_t nbytes,
                     size_t step, mr_tls_session_t **session, char *out, size_t outlen);
int mr_tls_test_out_stability(mr_tls_ctx_t *server_ctx, mr_tls_ctx_t *client_ctx, char *out, size_t outlen);
]])

local MR_TLS_OK, MR_TLS_WANT, MR_TLS_ERR = 0, 1, -1
local VERIFY = { none = 0, optional = 1, require = 2 }

-- test PKI ---------------------------------------------------------------------------------------

local pki = helpers.pki("tls-unit-pki")
local path, sh, make_ca, leaf = pki.path, pki.sh, pki.make_ca, pki.leaf
local function write(name, s) helpers.write_file(path(name), s) end

local function build_pki()
  make_ca("ca", "Test CA")
  make_ca("ca2", "Other CA")
  local server = "extendedKeyUsage=serverAuth\n"
  leaf("a", "rsa", "/CN=a.test", "ca", "subjectAltName=DNS:a.test\n" .. server)
  leaf("b", "ec", "/CN=wild", "ca", "subjectAltName=DNS:*.b.test\n" .. server)
  leaf("c", "ec", "/CN=c.test", "ca", server) -- no SAN: the CN names it
  leaf("d_rsa", "rsa", "/CN=d.test/O=rsa", "ca", "subjectAltName=DNS:d.test\n" .. server)
  leaf("d_ec", "ec", "/CN=d.test/O=ec", "ca", "subjectAltName=DNS:d.test\n" .. server)
  leaf("client", "ec", "/O=Moonring Test/CN=client", "ca", "extendedKeyUsage=clientAuth\n")
  leaf("client2", "ec", "/CN=intruder", "ca2", "extendedKeyUsage=clientAuth\n")
  sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key")
  write("bad.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
  write("garbage.key", "hello\n")
end

-- FFI helpers ------------------------------------------------------------------------------------

local function cstr_array(list, anchors)
  if not list then return nil, 0 end
  local arr = ffi.new("const char *[?]", #list)
  for i, s in ipairs(list) do arr[i - 1] = s; anchors[#anchors + 1] = s end
  anchors[#anchors + 1] = arr
  return arr, #list
end

local function server_ctx(o)
  local anchors = {}
  local conf = ffi.new("mr_tls_server_conf_t")
  local certs = ffi.new("mr_tls_cert_conf_t[?]", #o.certs)
  for i, c in ipairs(o.certs) do
    local cert = c.cert:sub(1, 1) == "/" and c.cert or path(c.cert)
    local key = c.key:sub(1, 1) == "/" and c.key or path(c.key)
    anchors[#anchors + 1] = cert; anchors[#anchors + 1] = key
    certs[i - 1].cert_path = cert
    certs[i - 1].key_path = key
  end
  conf.certs, conf.ncerts = certs, #o.certs
  conf.where = o.where
  conf.min_protocol, conf.max_protocol = o.min, o.max
  conf.ciphers, conf.ciphersuites = o.ciphers, o.ciphersuites
  conf.alpn, conf.nalpn = cstr_array(o.alpn, anchors)
  conf.client_verify = VERIFY[o.client_verify or "none"]
  local ca = o.client_ca and path(o.client_ca)
  conf.client_ca = ca
  conf.session_cache = o.session_cache or 0
  conf.no_tickets = o.no_tickets or false
  local out = ffi.new("mr_tls_ctx_t *[1]")
  local err = ffi.new("char[512]")
  local rc = lib.mr_tls_server_ctx_new(conf, out, err, 512)
  anchors = nil
  if rc ~= 0 then return nil, ffi.string(err) end
  return ffi.gc(out[0], lib.mr_tls_ctx_unref)
end

local function client_ctx(o)
  o = o or {}
  local anchors = {}
  local conf = ffi.new("mr_tls_client_conf_t")
  conf.verify = o.verify or false
  local ca = o.ca and path(o.ca)
  local cert = o.cert and path(o.cert)
  local key = o.key and path(o.key)
  conf.ca_file, conf.cert_path, conf.key_path = ca, cert, key
  conf.min_protocol, conf.max_protocol = o.min, o.max
  conf.ciphers = o.ciphers
  conf.alpn, conf.nalpn = cstr_array(o.alpn or { "http/1.1" }, anchors)
  local out = ffi.new("mr_tls_ctx_t *[1]")
  local err = ffi.new("char[512]")
  local rc = lib.mr_tls_client_ctx_new(conf, out, err, 512)
  if rc ~= 0 then return nil, ffi.string(err) end
  return ffi.gc(out[0], lib.mr_tls_ctx_unref)
end

local function parse(text)
  local r = { errors = {} }
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) (.*)$")
    if k == "error" then r.errors[#r.errors + 1] = v elseif k then r[k] = v end
  end
  return r
end

-- pair(sctx, cctx, { sni=, bytes=, step=, session = holder })
local function pair(sctx, cctx, o)
  o = o or {}
  local buf = ffi.new("char[4096]")
  local rc = lib.mr_tls_test_pair(sctx, cctx, o.sni, o.bytes or 1000, o.step or 0, o.session, buf, 4096)
  local text = ffi.string(buf)
  local r = parse(text)
  r.rc, r.text = rc, text
  return r
end

local function new_session_holder()
  local h = ffi.new("mr_tls_session_t *[1]")
  return ffi.gc(h, function(x) lib.mr_tls_session_free(x[0]) end)
end

local A = { cert = "a.pem", key = "a.key" }
local B = { cert = "b.pem", key = "b.key" }
local C = { cert = "c.pem", key = "c.key" }

-- specs ------------------------------------------------------------------------------------------

describe("tls engine", function()
  setup(build_pki)
  teardown(pki.remove)

  describe("handshake", function()
    it("negotiates TLS 1.3 by default, with ALPN http/1.1 and intact data", function()
      local s = assert(server_ctx { certs = { A } })
      local r = pair(s, client_ctx(), { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("TLSv1.3", r.protocol)
      assert.equal("http/1.1", r.alpn)
      assert.equal("a.test", r.sni)
      assert.equal("CN=a.test", r.cert)
      assert.equal("1000 ok", r.data)
      assert.equal("1", r.closed)
      assert.equal("0", r.reused)
    end)

    it("negotiates TLS 1.2 when the server caps it (ECDHE + AEAD by default)", function()
      local s = assert(server_ctx { certs = { A }, max = "TLSv1.2" })
      local r = pair(s, client_ctx(), { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("TLSv1.2", r.protocol)
      assert.matches("^ECDHE%-RSA%-.*GCM", r.cipher)
      assert.equal("http/1.1", r.alpn)
    end)

    it("honours a forced TLS 1.3 minimum against a TLS 1.2-only client", function()
      local s = assert(server_ctx { certs = { A }, min = "TLSv1.3" })
      local r = pair(s, client_ctx { max = "TLSv1.2" }, { sni = "a.test" })
      assert.equal(-1, r.rc)
      assert.matches("error server: .*protocol", r.text)
    end)

    it("applies configured TLS 1.2 ciphers and TLS 1.3 suites", function()
      local s = assert(server_ctx { certs = { A }, max = "TLSv1.2", ciphers = "ECDHE-RSA-CHACHA20-POLY1305" })
      local r = pair(s, client_ctx(), { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("ECDHE-RSA-CHACHA20-POLY1305", r.cipher)
      s = assert(server_ctx { certs = { A }, ciphersuites = "TLS_CHACHA20_POLY1305_SHA256" })
      r = pair(s, client_ctx(), { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("TLS_CHACHA20_POLY1305_SHA256", r.cipher)
    end)

    it("survives ciphertext delivered one byte at a time", function()
      local s = assert(server_ctx { certs = { A } })
      for _, max in ipairs { "TLSv1.2", "TLSv1.3" } do
        local r = pair(s, client_ctx { max = max }, { sni = "a.test", step = 1, bytes = 3000 })
        assert.equal(0, r.rc, r.text)
        assert.equal(max, r.protocol)
        assert.equal("3000 ok", r.data)
      end
    end)

    it("continues without ALPN when the client offers nothing we speak", function()
      local s = assert(server_ctx { certs = { A } })
      local r = pair(s, client_ctx { alpn = { "h2" } }, { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("-", r.alpn)
    end)

    it("selects by server preference from a configured ALPN list (h2 slot)", function()
      local s = assert(server_ctx { certs = { A }, alpn = { "h2", "http/1.1" } })
      assert.equal("h2", pair(s, client_ctx { alpn = { "http/1.1", "h2" } }, { sni = "a.test" }).alpn)
      assert.equal("http/1.1", pair(s, client_ctx { alpn = { "http/1.1" } }, { sni = "a.test" }).alpn)
    end)

    it("moves 10 MiB each way intact, on TLS 1.2 and 1.3", function()
      local s = assert(server_ctx { certs = { A } })
      for _, max in ipairs { "TLSv1.2", "TLSv1.3" } do
        local r = pair(s, client_ctx { max = max }, { sni = "a.test", bytes = 10 * 1024 * 1024 })
        assert.equal(0, r.rc, r.text)
        assert.equal(10 * 1024 * 1024 .. " ok", r.data)
      end
    end)

    it("keeps peeked ciphertext in place, bounds the output, and hands it out by iovec and copy", function()
      local s = assert(server_ctx { certs = { A } })
      local buf = ffi.new("char[1024]")
      local rc = lib.mr_tls_test_out_stability(s, client_ctx(), buf, 1024)
      local r = parse(ffi.string(buf))
      assert.equal(0, rc, ffi.string(buf))
      assert.equal("1", r.stable)
      assert.equal("1", r.blocked)
      assert.truthy(tonumber(r.pending) >= 256 * 1024 and tonumber(r.pending) < 400 * 1024, r.pending)
      assert.matches("ok$", r.iov)
      assert.equal(1024 * 1024 .. " ok", r.data)
    end)
  end)

  describe("SNI", function()
    local s
    before_each(function() s = assert(server_ctx { certs = { A, B, C } }) end)

    it("selects by exact name", function()
      assert.equal("CN=a.test", pair(s, client_ctx(), { sni = "a.test" }).cert)
      assert.equal("CN=a.test", pair(s, client_ctx(), { sni = "A.Test" }).cert)
    end)

    it("selects by wildcard, one label only", function()
      local r = pair(s, client_ctx(), { sni = "x.b.test" })
      assert.equal("CN=wild", r.cert)
      assert.equal("x.b.test", r.sni)
      assert.equal("CN=a.test", pair(s, client_ctx(), { sni = "y.x.b.test" }).cert)
      assert.equal("CN=a.test", pair(s, client_ctx(), { sni = "b.test" }).cert)
    end)

    it("falls back to the CN when a certificate has no SAN", function()
      assert.equal("CN=c.test", pair(s, client_ctx(), { sni = "c.test" }).cert)
    end)

    it("uses the first certificate for unknown or absent SNI", function()
      local r = pair(s, client_ctx(), { sni = "unknown.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("CN=a.test", r.cert)
      r = pair(s, client_ctx(), {})
      assert.equal(0, r.rc, r.text)
      assert.equal("CN=a.test", r.cert)
      assert.equal("-", r.sni)
    end)

    it("serves RSA and ECDSA certificates for the same names by client capability", function()
      local d = assert(server_ctx { certs = { A, { cert = "d_rsa.pem", key = "d_rsa.key" },
        { cert = "d_ec.pem", key = "d_ec.key" } } })
      local r = pair(d, client_ctx { max = "TLSv1.2", ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256" }, { sni = "d.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("EC", r.cert_key)
      r = pair(d, client_ctx { max = "TLSv1.2", ciphers = "ECDHE-RSA-AES128-GCM-SHA256" }, { sni = "d.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("RSA", r.cert_key)
    end)
  end)

  describe("session resumption", function()
    for _, max in ipairs { "TLSv1.2", "TLSv1.3" } do
      it("resumes with a ticket, also on another worker's context (" .. max .. ")", function()
        local s1 = assert(server_ctx { certs = { A, B } })
        local s2 = assert(server_ctx { certs = { A, B } }) -- same conf, built again
        local c = client_ctx { max = max }
        local sess = new_session_holder()
        local r = pair(s1, c, { sni = "a.test", session = sess })
        assert.equal(0, r.rc, r.text)
        assert.equal("0", r.reused)
        assert.is_not_nil(sess[0] ~= nil and sess[0] or nil, "no session")
        r = pair(s1, c, { sni = "a.test", session = sess })
        assert.equal(0, r.rc, r.text)
        assert.equal("1", r.reused)
        r = pair(s2, c, { sni = "a.test", session = sess })
        assert.equal(0, r.rc, r.text)
        assert.equal("1", r.reused)
        assert.equal(max, r.protocol)
      end)
    end

    it("does not resume on a listener with other settings", function()
      local s1 = assert(server_ctx { certs = { A } })
      local other = assert(server_ctx { certs = { A, B } })
      local c = client_ctx()
      local sess = new_session_holder()
      assert.equal(0, pair(s1, c, { sni = "a.test", session = sess }).rc)
      local r = pair(other, c, { sni = "a.test", session = sess })
      assert.equal(0, r.rc, r.text)
      assert.equal("0", r.reused)
    end)

    it("still accepts tickets after one key rotation, not after two", function()
      local s = assert(server_ctx { certs = { A } })
      local c = client_ctx()
      local sess1 = new_session_holder()
      assert.equal(0, pair(s, c, { sni = "a.test", session = sess1 }).rc)
      lib.mr_tls_rotate_ticket_keys()
      -- sealed under what is now the previous key: still resumes
      local r = pair(s, c, { sni = "a.test", session = sess1 })
      assert.equal("1", r.reused, r.text)
      local sess2 = new_session_holder()
      assert.equal(0, pair(s, c, { sni = "a.test", session = sess2 }).rc)
      lib.mr_tls_rotate_ticket_keys()
      lib.mr_tls_rotate_ticket_keys()
      r = pair(s, c, { sni = "a.test", session = sess2 })
      assert.equal(0, r.rc, r.text)
      assert.equal("0", r.reused)
    end)

    it("resumes through the stateful cache when tickets are off", function()
      local s = assert(server_ctx { certs = { A }, no_tickets = true, session_cache = 100, max = "TLSv1.2" })
      local c = client_ctx()
      local sess = new_session_holder()
      assert.equal(0, pair(s, c, { sni = "a.test", session = sess }).rc)
      assert.equal("1", pair(s, c, { sni = "a.test", session = sess }).reused)
      local none = assert(server_ctx { certs = { A }, no_tickets = true })
      local sess2 = new_session_holder()
      assert.equal(0, pair(none, c, { sni = "a.test", session = sess2 }).rc)
      assert.equal("0", pair(none, c, { sni = "a.test", session = sess2 }).reused)
    end)
  end)

  describe("client certificates (mTLS)", function()
    for _, max in ipairs { "TLSv1.2", "TLSv1.3" } do
      it("require: accepts a good certificate and reports subject and fingerprint (" .. max .. ")", function()
        local s = assert(server_ctx { certs = { A }, client_verify = "require", client_ca = "ca.pem" })
        local r = pair(s, client_ctx { cert = "client.pem", key = "client.key", max = max }, { sni = "a.test" })
        assert.equal(0, r.rc, r.text)
        assert.equal("CN=client,O=Moonring Test", r.peer)
        local p = io.popen("openssl x509 -in '" .. path("client.pem") .. "' -noout -fingerprint -sha256")
        local fp = p:read("*a"):match("=([%x:]+)"):gsub(":", ""):lower()
        p:close()
        assert.equal(fp, r.peer_fp)
      end)

      it("require: rejects a missing certificate (" .. max .. ")", function()
        local s = assert(server_ctx { certs = { A }, client_verify = "require", client_ca = "ca.pem" })
        local r = pair(s, client_ctx { max = max }, { sni = "a.test" })
        assert.equal(-1, r.rc)
        assert.matches("error server: peer did not return a certificate", r.text, 1, true)
      end)

      it("require: rejects a certificate from another CA (" .. max .. ")", function()
        local s = assert(server_ctx { certs = { A }, client_verify = "require", client_ca = "ca.pem" })
        local r = pair(s, client_ctx { cert = "client2.pem", key = "client2.key", max = max }, { sni = "a.test" })
        assert.equal(-1, r.rc)
        assert.matches("error server: certificate verify failed", r.text, 1, true)
      end)
    end

    it("optional: accepts no certificate, verifies one that is sent", function()
      local s = assert(server_ctx { certs = { A }, client_verify = "optional", client_ca = "ca.pem" })
      local r = pair(s, client_ctx(), { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("-", r.peer)
      r = pair(s, client_ctx { cert = "client.pem", key = "client.key" }, { sni = "a.test" })
      assert.equal("CN=client,O=Moonring Test", r.peer)
      r = pair(s, client_ctx { cert = "client2.pem", key = "client2.key" }, { sni = "a.test" })
      assert.equal(-1, r.rc)
    end)

    it("keeps the verified peer on a resumed session", function()
      local s = assert(server_ctx { certs = { A }, client_verify = "require", client_ca = "ca.pem" })
      local c = client_ctx { cert = "client.pem", key = "client.key" }
      local sess = new_session_holder()
      assert.equal(0, pair(s, c, { sni = "a.test", session = sess }).rc)
      local r = pair(s, c, { sni = "a.test", session = sess })
      assert.equal("1", r.reused, r.text)
      assert.equal("CN=client,O=Moonring Test", r.peer)
    end)
  end)

  describe("upstream verification", function()
    local s
    before_each(function() s = assert(server_ctx { certs = { A, B } }) end)

    it("verifies the chain and the name against a configured CA", function()
      local r = pair(s, client_ctx { verify = true, ca = "ca.pem" }, { sni = "a.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("CN=a.test", r.upstream_peer)
      r = pair(s, client_ctx { verify = true, ca = "ca.pem" }, { sni = "z.b.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("CN=wild", r.upstream_peer)
    end)

    it("fails clearly on a name mismatch", function()
      local r = pair(s, client_ctx { verify = true, ca = "ca.pem" }, { sni = "wrong.test" })
      assert.equal(-1, r.rc)
      assert.matches("error client: certificate verify failed: hostname mismatch", r.text:lower(), 1, true)
    end)

    it("fails clearly on an untrusted certificate", function()
      local r = pair(s, client_ctx { verify = true, ca = "ca2.pem" }, { sni = "a.test" })
      assert.equal(-1, r.rc)
      assert.matches("error client: certificate verify failed: unable to get local issuer certificate", r.text, 1, true)
      -- the system store does not know the test CA either
      r = pair(s, client_ctx { verify = true }, { sni = "a.test" })
      assert.equal(-1, r.rc)
      assert.matches("error client: certificate verify failed", r.text, 1, true)
    end)

    it("does not verify when verification is off", function()
      local r = pair(s, client_ctx { verify = false }, { sni = "wrong.test" })
      assert.equal(0, r.rc, r.text)
      assert.equal("-", r.upstream_peer)
    end)
  end)

  describe("config errors name the key and the file", function()
    it("missing certificate or key file", function()
      local _, err = server_ctx { certs = { A, { cert = "nope.pem", key = "a.key" } } }
      assert.equal("tls.certs[2].cert: " .. path("nope.pem") .. ": cannot read (No such file or directory)", err)
      _, err = server_ctx { where = "listen[1].tls", certs = { { cert = "a.pem", key = "nope.key" } } }
      assert.equal("listen[1].tls.certs[1].key: " .. path("nope.key") .. ": cannot read (No such file or directory)", err)
    end)

    it("bad PEM", function()
      local _, err = server_ctx { certs = { { cert = "bad.pem", key = "a.key" } } }
      assert.matches("^tls%.certs%[1%]%.cert: " .. path("bad.pem"):gsub("%p", "%%%0") .. ": not a PEM certificate", err)
      _, err = server_ctx { certs = { { cert = "a.pem", key = "garbage.key" } } }
      assert.matches("^tls%.certs%[1%]%.key: .*garbage%.key: not an unencrypted PEM private key", err)
    end)

    it("mismatched certificate and key", function()
      local _, err = server_ctx { certs = { A, { cert = "a.pem", key = "other.key" } } }
      assert.equal("tls.certs[2]: key " .. path("other.key") .. " does not match certificate " .. path("a.pem"), err)
      _, err = client_ctx { cert = "client.pem", key = "a.key" }
      assert.matches("^upstream%.tls: key .*a%.key does not match certificate .*client%.pem$", err)
    end)

    it("client CA, protocols, ciphers, ALPN", function()
      local _, err = server_ctx { certs = { A }, client_verify = "require" }
      assert.equal("tls.client_ca: missing", err)
      _, err = server_ctx { certs = { A }, client_verify = "require", client_ca = "nope.pem" }
      assert.matches("^tls%.client_ca: .*nope%.pem: cannot read", err)
      _, err = server_ctx { certs = { A }, min = "TLSv1.0" }
      assert.matches("^tls%.protocols: unsupported minimum protocol \"TLSv1%.0\"", err)
      _, err = server_ctx { certs = { A }, min = "TLSv1.3", max = "TLSv1.2" }
      assert.matches("^tls%.protocols: minimum", err)
      _, err = server_ctx { certs = { A }, ciphers = "NOPE" }
      assert.matches("^tls%.ciphers:", err)
      _, err = server_ctx { certs = { A }, ciphersuites = "NOPE" }
      assert.matches("^tls%.ciphersuites:", err)
      _, err = server_ctx { certs = { A }, alpn = { "" } }
      assert.equal("tls.alpn[1]: invalid protocol name", err)
      _, err = client_ctx { verify = true, ca = "nope.pem" }
      assert.matches("^upstream%.tls%.ca: .*nope%.pem: cannot read", err)
      _, err = server_ctx { certs = { A, A } }
      assert.matches("^tls%.certs%[2%]: .* same names and key type", err)
    end)
  end)

  describe("engine API", function()
    it("reports a peer that is not speaking TLS", function()
      local s = assert(server_ctx { certs = { A } })
      local t = lib.mr_tls_conn_new(s, true, nil)
      local junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
      assert.equal(MR_TLS_OK, lib.mr_tls_feed(t, junk, #junk))
      local buf = ffi.new("char[100]")
      local got = ffi.new("size_t[1]")
      assert.equal(MR_TLS_ERR, lib.mr_tls_read(t, buf, 100, got))
      assert.matches("http request", ffi.string(lib.mr_tls_error(t)):lower(), 1, true)
      assert.equal(MR_TLS_ERR, lib.mr_tls_feed(t, "x", 1)) -- sticky
      lib.mr_tls_conn_free(t)
    end)

    it("wants input before the handshake, and refuses writes until it is done", function()
      local c = client_ctx()
      local t = lib.mr_tls_conn_new(c, false, "a.test")
      local buf = ffi.new("char[100]")
      local got = ffi.new("size_t[1]")
      assert.equal(MR_TLS_WANT, lib.mr_tls_read(t, buf, 100, got))
      assert.truthy(lib.mr_tls_pending_out(t) > 0) -- the ClientHello
      assert.equal(MR_TLS_WANT, lib.mr_tls_write(t, "x", 1, got))
      assert.equal(0, tonumber(got[0]))
      assert.is_false(lib.mr_tls_handshake_done(t))
      assert.is_true(lib.mr_tls_conn_new(c, true, nil) == nil) -- a client context cannot accept
      lib.mr_tls_conn_free(t)
    end)

    it("works driven from Lua alone: shuttle, small reads, buffered plaintext, close_notify", function()
      local s = assert(server_ctx { certs = { A } })
      local srv = ffi.gc(lib.mr_tls_conn_new(s, true, nil), lib.mr_tls_conn_free)
      local cli = ffi.gc(lib.mr_tls_conn_new(client_ctx(), false, "a.test"), lib.mr_tls_conn_free)
      local buf = ffi.new("char[65536]")
      local n = ffi.new("size_t[1]")
      local function read_all(t, cap)
        local parts = {}
        while true do
          local rc = lib.mr_tls_read(t, buf, cap or 65536, n)
          if rc ~= MR_TLS_OK then return table.concat(parts), rc end
          parts[#parts + 1] = ffi.string(buf, n[0])
        end
      end
      local function move(from, to)
        while lib.mr_tls_pending_out(from) > 0 do
          lib.mr_tls_take_out(from, buf, 65536, n)
          assert.equal(MR_TLS_OK, lib.mr_tls_feed(to, buf, n[0]))
        end
      end
      read_all(cli)
      for _ = 1, 10 do
        move(cli, srv); read_all(srv); move(srv, cli); read_all(cli)
      end
      assert.is_true(lib.mr_tls_handshake_done(srv))
      assert.is_true(lib.mr_tls_handshake_done(cli))
      assert.equal("TLSv1.3", ffi.string(lib.mr_tls_protocol(srv)))
      local msg = ("0123456789"):rep(500)
      assert.equal(MR_TLS_OK, lib.mr_tls_write(srv, msg, #msg, n))
      assert.equal(#msg, tonumber(n[0]))
      move(srv, cli)
      assert.is_true(lib.mr_tls_read_pending(cli))
      assert.equal(MR_TLS_OK, lib.mr_tls_read(cli, buf, 10, n)) -- a small read leaves plaintext buffered
      assert.equal("0123456789", ffi.string(buf, n[0]))
      assert.is_true(lib.mr_tls_read_pending(cli))
      local rest, rc = read_all(cli, 333)
      assert.equal(MR_TLS_WANT, rc)
      assert.equal(#msg - 10, #rest)
      assert.is_false(lib.mr_tls_read_pending(cli))
      assert.equal(MR_TLS_OK, lib.mr_tls_shutdown(srv))
      move(srv, cli)
      local _, rc2 = read_all(cli)
      assert.equal(2, rc2) -- MR_TLS_CLOSED
    end)

    it("probes kTLS without using it", function()
      local e = os.execute("test -e /sys/module/tls")
      local want = e == 0 or e == true
      assert.equal(want, lib.mr_tls_ktls_available())
    end)
  end)
end)
