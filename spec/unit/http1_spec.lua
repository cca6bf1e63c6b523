-- The HTTP/1 codec wrapper (src/http1) through its pure test API, over LuaJIT FFI on
-- libmoonring_ffi.so (MOONRING_FFI_LIB). Every case is also parsed fed byte by byte and in odd-sized
-- pieces: the outcome must not depend on how the bytes arrive.
local helpers = require "helpers"
local ffi = require "ffi"

local lib = helpers.core_lib_or_rerun(debug.getinfo(1, "S").source:gsub("^@", ""), "http1 codec")
if not lib then return end

ffi.cdef [[
int mr_http1_parse_ex(int type, int flags, size_t step, uint32_t max_request_line, uint32_t max_header_size,
                      uint32_t max_headers, const char *data, size_t len, char *out, size_t outlen);
]]

local REQ, RESP = 0, 1
local HEAD, EOF, PAUSE_HEAD = 1, 2, 4
local OUTLEN = 256 * 1024
local outbuf = ffi.new("char[?]", OUTLEN)

local function run(kind, bytes, opts, step)
  local rc = lib.mr_http1_parse_ex(kind, opts.flags or 0, step or 0, opts.max_request_line or 0,
    opts.max_header_size or 0, opts.max_headers or 0, bytes, #bytes, outbuf, OUTLEN)
  return rc, ffi.string(outbuf)
end

-- The summary text as a table: { msgs = { {method|status, url|reason, version, headers = {{name, value, flags}},
-- h = {lowercase name -> value}, cl, chunked, keepalive, upgrade, expect, body_len, body, trailers, t, done} },
-- error = status, reason, partial, closed, rest, text }
local function unescape(s)
  return (s:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function decode(text)
  local r = { msgs = {}, text = text }
  local cur
  for line in text:gmatch("[^\n]+") do
    local key, rest = line:match("^(%S+) ?(.*)$")
    if key == "msg" then
      cur = { headers = {}, h = {}, trailers = {}, t = {} }
      r.msgs[#r.msgs + 1] = cur
    elseif key == "method" or key == "url" or key == "reason" or key == "version" then
      cur[key] = unescape(rest)
    elseif key == "status" or key == "cl" then
      cur[key] = tonumber(rest)
    elseif key == "chunked" or key == "keepalive" or key == "upgrade" or key == "expect" then
      cur[key] = rest == "1"
    elseif key == "header" or key == "trailer" then
      local name, value, flags = rest:match("^(.-): (.-) %[(.*)%]$")
      if not name then name, value = rest:match("^(.-): (.*)$") end
      name, value = unescape(name), unescape(value)
      local list, map = cur.headers, cur.h
      if key == "trailer" then list, map = cur.trailers, cur.t end
      list[#list + 1] = { name, value, flags or "" }
      map[name:lower()] = value
    elseif key == "body" then
      local n, preview = rest:match('^(%d+) "(.*)"$')
      cur.body_len, cur.body = tonumber(n), unescape(preview)
    elseif key == "done" then
      cur.done = true
    elseif key == "error" then
      local st, why = rest:match("^(%d+) (.*)$")
      r.error, r.reason = tonumber(st), why
    elseif key == "partial" then
      r.partial = true
    elseif key == "closed" then
      r.closed = true
    elseif key == "rest" then
      r.rest = tonumber(rest)
    end
  end
  return r
end

-- Parses `bytes` whole, then byte by byte and in pieces of 7 and 64; asserts all agree and
-- returns the decoded result.
local function parse(kind, bytes, opts)
  opts = opts or {}
  local rc, text = run(kind, bytes, opts, 0)
  for _, step in ipairs({ 1, 7, 64 }) do
    local rc2, text2 = run(kind, bytes, opts, step)
    assert(text2 == text, ("step %d gave a different result for %q:\n--- whole\n%s--- step %d\n%s")
      :format(step, bytes:sub(1, 300), text, step, text2))
    assert(rc2 == rc)
  end
  local r = decode(text)
  r.rc = rc
  assert(rc == (r.error or 0), text)
  assert(not text:find("error 0 stuck", 1, true), text)
  assert(not text:find("internal:", 1, true), "pre-scan and llhttp disagreed:\n" .. text)
  return r
end

local function req(bytes, opts) return parse(REQ, bytes, opts) end
local function resp(bytes, opts) return parse(RESP, bytes, opts) end

-- Asserts the request is refused with `status` and returns the result.
local function rejects(status, bytes, opts)
  local r = req(bytes, opts)
  assert(r.error == status, ("expected %d for %q, got:\n%s"):format(status, bytes:sub(1, 300), r.text))
  return r
end

local function rejects_resp(bytes, opts)
  local r = resp(bytes, opts)
  assert(r.error == 502, ("expected 502 for %q, got:\n%s"):format(bytes:sub(1, 300), r.text))
  return r
end

local H = "Host: example.test\r\n"
local function get(extra, target, version)
  return ("GET %s %s\r\n%s%s\r\n"):format(target or "/", version or "HTTP/1.1", H, extra or "")
end
local function post(extra, body)
  return "POST /p HTTP/1.1\r\n" .. H .. (extra or "") .. "\r\n" .. (body or "")
end
local CHUNKED = "Transfer-Encoding: chunked\r\n"

describe("http1 codec", function()
  describe("requests", function()
    it("parses a simple GET and classifies headers", function()
      local r = req("GET /a/b?c=d HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive, X-Foo\r\n"
        .. "X-Foo: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
        .. "X-Forwarded-For: 10.0.0.1\r\nVia: 1.0 a\r\nUser-Agent: t  \r\n\r\n")
      assert.is_nil(r.error)
      assert.equal(1, #r.msgs)
      local m = r.msgs[1]
      assert.equal("GET", m.method)
      assert.equal("/a/b?c=d", m.url)
      assert.equal("1.1", m.version)
      assert.is_true(m.done and m.keepalive)
      assert.equal(-1, m.cl)
      assert.equal(0, m.body_len)
      local flags = {}
      for _, h in ipairs(m.headers) do flags[h[1]:lower()] = h[3] end
      assert.equal("host", flags["host"])
      assert.equal("hop", flags["connection"])
      assert.equal("hop", flags["x-foo"], "a header named by Connection is hop-by-hop")
      assert.equal("hop", flags["keep-alive"])
      assert.equal("hop", flags["te"])
      assert.equal("hop", flags["proxy-authorization"])
      assert.equal("xff", flags["x-forwarded-for"])
      assert.equal("via", flags["via"])
      assert.equal("", flags["user-agent"])
      assert.equal("t", m.h["user-agent"], "trailing whitespace is trimmed")
    end)

    it("answers pipelined requests one by one, bodies delimited exactly", function()
      local r = req(get() .. post("Content-Length: 5\r\n", "hello")
        .. "PUT /q HTTP/1.1\r\n" .. H .. CHUNKED .. "\r\n3\r\nabc\r\n0\r\n\r\n"
        .. "DELETE /r HTTP/1.1\r\n" .. H .. "\r\n")
      assert.is_nil(r.error)
      assert.equal(4, #r.msgs)
      assert.same({ "GET", "POST", "PUT", "DELETE" },
        { r.msgs[1].method, r.msgs[2].method, r.msgs[3].method, r.msgs[4].method })
      assert.equal("hello", r.msgs[2].body)
      assert.equal("abc", r.msgs[3].body)
      assert.is_true(r.msgs[3].chunked)
      assert.is_true(r.msgs[4].done)
      assert.is_nil(r.partial)
    end)

    for _, method in ipairs({ "GET", "HEAD", "OPTIONS", "DELETE" }) do
      it(method .. " with a Content-Length body consumes exactly those bytes before the next request", function()
        local r = req(method .. " /x HTTP/1.1\r\n" .. H .. "Content-Length: 18\r\n\r\n"
          .. "GET /smuggled HTTP" .. "GET /next HTTP/1.1\r\n" .. H .. "\r\n")
        assert.is_nil(r.error, r.text)
        assert.equal(2, #r.msgs)
        assert.equal(18, r.msgs[1].body_len)
        assert.equal("GET /smuggled HTTP", r.msgs[1].body)
        assert.equal("/next", r.msgs[2].url)
      end)
    end

    it("tolerates empty lines before a request line", function()
      local r = req("\r\n\r\n" .. get())
      assert.is_nil(r.error)
      assert.equal(1, #r.msgs)
    end)

    it("keeps obs-text and tabs in values", function()
      local r = req(get("X-Latin: caf\xe9\tbar\r\n"))
      assert.is_nil(r.error)
      assert.equal("caf\xe9\tbar", r.msgs[1].h["x-latin"])
    end)

    it("takes HTTP/1.0 without Host, closing unless keep-alive is asked for", function()
      local r = req("GET / HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n")
      assert.is_nil(r.error)
      assert.equal(1, #r.msgs)
      assert.equal("1.0", r.msgs[1].version)
      assert.is_false(r.msgs[1].keepalive)
      assert.is_true(r.closed, "nothing after a non-persistent request is parsed")
      r = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n")
      assert.equal(2, #r.msgs)
      assert.is_true(r.msgs[1].keepalive)
    end)

    it("stops parsing after Connection: close", function()
      local r = req(get("Connection: close\r\n") .. get())
      assert.equal(1, #r.msgs)
      assert.is_true(r.closed)
    end)

    it("hands over the rest of the stream after an upgrade", function()
      local r = req(get("Connection: Upgrade\r\nUpgrade: websocket\r\n") .. "\129\5hello")
      assert.is_nil(r.error)
      assert.is_true(r.msgs[1].upgrade)
      assert.equal(7, r.rest)
    end)

    it("accepts Content-Length: 0 and leading zeros", function()
      local r = req(post("Content-Length: 0\r\n") .. post("Content-Length: 007\r\n", "1234567"))
      assert.is_nil(r.error)
      assert.equal(0, r.msgs[1].cl)
      assert.equal(7, r.msgs[2].cl)
      assert.equal("1234567", r.msgs[2].body)
    end)

    it("reports a request cut short as partial", function()
      assert.is_true(req("GET / HTTP/1.1\r\nHost: x\r\n").partial)
      assert.is_true(req(post("Content-Length: 10\r\n", "12345")).partial)
      assert.is_true(req(post(CHUNKED, "5\r\nhel")).partial)
      assert.is_true(req("\r").partial)
    end)

    describe("Expect", function()
      it("flags 100-continue on HTTP/1.1 only", function()
        assert.is_true(req(post("Expect: 100-continue\r\nContent-Length: 1\r\n", "x")).msgs[1].expect)
        assert.is_true(req(post("Expect: 100-Continue\r\nContent-Length: 1\r\n", "x")).msgs[1].expect)
        local r = req("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
        assert.is_nil(r.error)
        assert.is_false(r.msgs[1].expect, "RFC 9110 10.1.1: ignored for HTTP/1.0")
      end)
      it("answers 417 to any other expectation", function()
        rejects(417, get("Expect: something\r\n"))
        rejects(417, get("Expect: 100-continue, foo\r\n"))
        rejects(417, get("Expect: \r\n"))
      end)
    end)

    describe("targets and Host", function()
      it("regenerates Host from an absolute-form target", function()
        local r = req("GET http://origin.test:8080/p/q?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        assert.is_nil(r.error)
        assert.equal("/p/q?x=1", r.msgs[1].url)
        assert.equal("origin.test:8080", r.msgs[1].h["host"])
        r = req("GET HTTPS://Origin.Test?x HTTP/1.1\r\nHost: other\r\n\r\n")
        assert.equal("/?x", r.msgs[1].url)
        assert.equal("Origin.Test", r.msgs[1].h["host"])
        r = req("GET http://[::1]:81 HTTP/1.0\r\n\r\n")
        assert.equal("/", r.msgs[1].url)
        assert.equal("[::1]:81", r.msgs[1].h["host"], "added when the request had none")
        assert.equal(1, #r.msgs[1].headers)
      end)
      it("accepts OPTIONS * only", function()
        assert.is_nil(req("OPTIONS * HTTP/1.1\r\n" .. H .. "\r\n").error)
        rejects(400, "GET * HTTP/1.1\r\n" .. H .. "\r\n")
      end)
      it("accepts IP literals, ports and an empty Host", function()
        for _, host in ipairs({ "a.b", "a.b:80", "a.b:", "[::1]", "[::1]:443", "127.0.0.1:1", "xn--bcher-kva.example", "" }) do
          local r = req("GET / HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n")
          assert.is_nil(r.error, host .. ": " .. r.text)
        end
      end)
      it("rejects a missing, repeated or malformed Host", function()
        rejects(400, "GET / HTTP/1.1\r\n\r\n")
        rejects(400, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")
        rejects(400, "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")
        for _, host in ipairs({ "user@a.b", "user:pw@a.b", "a.b/path", "a.b?q", "a.b#f", "a b", "a\\b", "a.b:8x",
          "a.b:123456", ":80", "[::1", "[]", "a.b:80:90", "a\"b" }) do
          rejects(400, "GET / HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n")
        end
      end)
      it("rejects other target forms", function()
        rejects(400, get(nil, "http://user@a.b/"))
        rejects(400, get(nil, "http:///x"))
        rejects(400, get(nil, "http://a b/"))
        rejects(400, get(nil, "ftp://a.b/"))
        rejects(400, get(nil, "relative/path"))
        rejects(400, get(nil, "a.b:80"))
        rejects(405, "CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n")
      end)
    end)

    describe("chunked bodies", function()
      it("decodes chunks, drops extensions and keeps trailers apart", function()
        local r = req(post(CHUNKED, "5;name=value;other=x\r\nhello\r\nA\r\n 123456789\r\n000\r\n"
          .. "X-Checksum: abc\r\nContent-Length: 99\r\nHost: evil\r\n"
          .. "Connection: close\r\nX-Other: 1\r\n\r\n") .. get())
        assert.is_nil(r.error, r.text)
        local m = r.msgs[1]
        assert.equal("hello 123456789", m.body)
        assert.same({ { "X-Checksum", "abc", "" }, { "X-Other", "1", "" } }, m.trailers)
        assert.is_nil(m.h["x-checksum"], "trailers are not head fields")
        assert.equal("example.test", m.h["host"])
        assert.equal(2, #r.msgs, "a Connection trailer does not close")
      end)
      it("drops Transfer-Encoding and Content-Length trailers, whatever their value", function()
        local r = req(post(CHUNKED, "0\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\nX: 1\r\n\r\n") .. get())
        assert.is_nil(r.error, r.text)
        assert.equal(2, #r.msgs)
        assert.same({ { "X", "1", "" } }, r.msgs[1].trailers)
      end)
      it("trims trailer values and keeps empty ones", function()
        local r = req(post(CHUNKED, "0\r\nA:  v w \t\r\nB:\r\nC:\t\r\n\r\n"))
        assert.same({ { "A", "v w", "" }, { "B", "", "" }, { "C", "", "" } }, r.msgs[1].trailers)
      end)
      it("accepts upper and lower case hex and leading zeros", function()
        local body = ("x"):rep(0x1f)
        local r = req(post(CHUNKED, "1F\r\n" .. body .. "\r\n001f\r\n" .. body .. "\r\n0\r\n\r\n"))
        assert.is_nil(r.error)
        assert.equal(62, r.msgs[1].body_len)
      end)
      it("waits for a huge (but representable) chunk", function()
        local r = req(post(CHUNKED, "fffffffffffffff\r\n"))
        assert.is_nil(r.error)
        assert.is_true(r.partial)
      end)
      for _, size in ipairs({ "0x5", "+5", "-5", " 5", "5 ", "5\t", "5 ;a=b", "", "g", "5_0",
        "1000000000000000", "ffffffffffffffffff", "99999999999999999999" }) do
        it(("rejects the chunk size %q"):format(size), function()
          rejects(400, post(CHUNKED, size .. "\r\nhello\r\n0\r\n\r\n"))
        end)
      end
      it("rejects chunk data not followed by CRLF", function()
        rejects(400, post(CHUNKED, "5\r\nhelloXX0\r\n\r\n"))
        rejects(400, post(CHUNKED, "5\r\nhello\rX0\r\n\r\n"))
        rejects(400, post(CHUNKED, "5\r\nhello\n0\r\n\r\n"))
        rejects(400, post(CHUNKED, "5\r\nhello0\r\n\r\n"))
      end)
      it("rejects bare CR and LF in chunk lines and trailers", function()
        rejects(400, post(CHUNKED, "5\rX\r\nhello\r\n0\r\n\r\n"))
        rejects(400, post(CHUNKED, "5\nhello\r\n0\r\n\r\n"))
        rejects(400, post(CHUNKED, "5;a=b\rc\r\nhello\r\n0\r\n\r\n"))
        rejects(400, post(CHUNKED, "0\r\nX: 1\rY: 2\r\n\r\n"))
        rejects(400, post(CHUNKED, "0\r\nX: 1\r\n\rX"))
        rejects(400, post(CHUNKED, "0\r\nX: 1\r\n folded\r\n\r\n"))
        rejects(400, post(CHUNKED, "0\r\nX : 1\r\n\r\n"))
        rejects(400, post(CHUNKED, "5;a\0\r\nhello\r\n0\r\n\r\n"))
      end)
      it("checks chunk extensions against RFC 9112 7.1.1 and strips them", function()
        for _, ext in ipairs({ ";a", ";a=b", ";a;b", ";a=b;c", ";a=b;c=d", ";a=b;c;d=e", ';a="b"', ';a="b c"',
          ';a="b\\"c"', ';a="\x80;="', ";A-1.b_c=~!#$%&'*+^`|" }) do
          local r = req(post(CHUNKED, "5" .. ext .. "\r\nhello\r\n0" .. ext .. "\r\n\r\n"))
          assert.is_nil(r.error, ext .. ": " .. r.text)
          assert.equal("hello", r.msgs[1].body)
        end
        for _, ext in ipairs({ ";", ";;", ";=b", ";a=", ";a b", ";a =b", ";a= b", "; a", ";a=b c", ";a=b=c", ";a=\x80",
          ';a="b', ';a="b"c', ';a="\0"', ";a\tb", ";a=b;", ";a(b)" }) do
          rejects(400, post(CHUNKED, "5" .. ext .. "\r\nhello\r\n0\r\n\r\n"))
        end
      end)
      it("caps chunk extensions", function()
        local ext = ";e=" .. ("v"):rep(600)
        assert.is_nil(req(post(CHUNKED, "1" .. ext .. "\r\nx\r\n0\r\n\r\n"), { max_header_size = 1024 }).error)
        -- per line and over the whole message
        rejects(400, post(CHUNKED, "1" .. ext .. ext .. "\r\nx\r\n0\r\n\r\n"), { max_header_size = 1024 })
        rejects(400, post(CHUNKED, "1" .. ext .. "\r\nx\r\n1" .. ext .. "\r\ny\r\n0\r\n\r\n"), { max_header_size = 1024 })
      end)
      it("limits the trailer section like a header section", function()
        local many = {}
        for i = 1, 5 do many[#many + 1] = ("T%d: v\r\n"):format(i) end
        rejects(431, post(CHUNKED, "0\r\n" .. table.concat(many) .. "\r\n"), { max_headers = 4 })
        rejects(431, post(CHUNKED, "0\r\nT: " .. ("v"):rep(2000) .. "\r\n\r\n"), { max_header_size = 1024 })
      end)
    end)

    describe("strictness", function()
      it("rejects Content-Length with Transfer-Encoding", function()
        rejects(400, post("Content-Length: 5\r\n" .. CHUNKED, "0\r\n\r\n"))
        rejects(400, post(CHUNKED .. "Content-Length: 5\r\n", "0\r\n\r\n"))
        rejects(400, post("Content-Length: 0\r\nTransfer-Encoding: gzip\r\n"))
      end)
      for _, cl in ipairs({
        { "duplicate, equal", "Content-Length: 5\r\nContent-Length: 5\r\n" },
        { "duplicate, different", "Content-Length: 5\r\nContent-Length: 6\r\n" },
        { "a list", "Content-Length: 5, 10\r\n" },
        { "an equal list", "Content-Length: 5, 5\r\n" },
        { "a plus sign", "Content-Length: +5\r\n" },
        { "a minus sign", "Content-Length: -5\r\n" },
        { "hex", "Content-Length: 0x5\r\n" },
        { "a space inside", "Content-Length: 1 0\r\n" },
        { "empty", "Content-Length: \r\n" },
        { "a decimal point", "Content-Length: 5.0\r\n" },
        { "overflow", "Content-Length: 99999999999999999999\r\n" },
        { "16 digits", "Content-Length: 1000000000000000\r\n" },
      }) do
        it("rejects Content-Length: " .. cl[1], function()
          rejects(400, post(cl[2], "hello"))
        end)
      end
      it("rejects Transfer-Encoding that does not end in chunked with 400", function()
        rejects(400, post("Transfer-Encoding: gzip\r\n", "x"))
        rejects(400, post("Transfer-Encoding: chunked, gzip\r\n", "x"))
        rejects(400, post("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"))
        rejects(400, post("Transfer-Encoding: \r\n", "x"))
        rejects(400, post("Transfer-Encoding: ,\r\n", "x"))
      end)
      it("rejects chunked applied twice", function()
        rejects(400, post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"))
        rejects(400, post(CHUNKED .. CHUNKED, "0\r\n\r\n"))
      end)
      it("answers 501 to codings other than chunked before it", function()
        rejects(501, post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"))
        rejects(501, post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"))
        rejects(501, post("Transfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"))
      end)
      it("rejects Transfer-Encoding in an HTTP/1.0 request", function()
        rejects(400, "POST / HTTP/1.0\r\n" .. CHUNKED .. "\r\n0\r\n\r\n")
      end)
      it("rejects whitespace between a header name and its colon", function()
        rejects(400, get("X-A : 1\r\n"))
        rejects(400, get("X-A\t: 1\r\n"))
        rejects(400, "GET / HTTP/1.1\r\nHost : example.test\r\n\r\n")
        rejects(400, post("Content-Length : 5\r\n", "hello"))
        rejects(400, post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"))
      end)
      it("rejects obs-fold and whitespace before the first header", function()
        rejects(400, get("X-A: 1\r\n continued\r\n"))
        rejects(400, get("X-A: 1\r\n\tcontinued\r\n"))
        rejects(400, "GET / HTTP/1.1\r\n Host: example.test\r\n\r\n")
        rejects(400, post(CHUNKED:gsub(": ", ":\r\n "), "0\r\n\r\n"))
      end)
      it("rejects header lines without a colon or with an empty or non-token name", function()
        rejects(400, get("NoColon\r\n"))
        rejects(400, get(": empty\r\n"))
        for _, name in ipairs({ "X y", "X(y)", "X\"y", "X/y", "X[y]", "X@y", "X\127y", "X\200y", "X\0y", "X{y}" }) do
          rejects(400, get(name .. ": 1\r\n"))
        end
      end)
      it("rejects NUL, CR, LF and other controls in a value", function()
        for _, v in ipairs({ "a\0b", "a\rb", "a\nb", "a\1b", "a\27b", "a\127b", "\0" }) do
          rejects(400, get("X-V: " .. v .. "\r\n"))
        end
      end)
      it("rejects a bare CR anywhere in the head", function()
        rejects(400, "\rGET / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET / HTTP/1.1\rX\n" .. H .. "\r\n")
        rejects(400, "GET /a\rb HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET / HTTP/1.1\r\n" .. H .. "X: 1\rY: 2\r\n\r\n")
        rejects(400, "GET / HTTP/1.1\r\n" .. H .. "\rX")
        rejects(400, "GET / HTTP/1.1\r\n" .. H .. "\r\r\n")
      end)
      it("rejects bare LF line endings", function()
        rejects(400, "GET / HTTP/1.1\nHost: a\n\n")
        rejects(400, "GET / HTTP/1.1\r\nHost: a\n\r\n")
        rejects(400, "GET / HTTP/1.1\r\nHost: a\r\n\n")
        rejects(400, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
      end)
      it("rejects HTTP/0.9 and malformed versions with 400", function()
        rejects(400, "GET /\r\n\r\n")
        rejects(400, "GET / \r\n\r\n")
        for _, v in ipairs({ "HTTP/1.1 ", "http/1.1", "HTTP/1.10", "HTTP/1", "HTTP/1.", "HTTP/a.b", "HTTP/1.a",
          "HTTP 1.1", "HTTPS/1.1", "HTTP/1.1x" }) do
          rejects(400, "GET / " .. v .. "\r\n" .. H .. "\r\n")
        end
      end)
      it("answers 505 as soon as a version digit is unsupported", function()
        rejects(505, "GET / HTTP/01.1\r\n" .. H .. "\r\n")
        rejects(505, "GET / HTTP/2")
      end)
      it("answers 505 to well-formed versions other than 1.0 and 1.1", function()
        for _, v in ipairs({ "HTTP/0.9", "HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/9.9" }) do
          rejects(505, "GET / " .. v .. "\r\n" .. H .. "\r\n")
        end
      end)
      it("rejects malformed request lines", function()
        rejects(400, "GET  / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET /  HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET\t/ HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, " GET / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "G(T / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "FOO / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET /caf\xe9 HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GET /a\0 HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "GARBAGE\r\n\r\n")
        -- the HTTP/2 preface: llhttp 8 would wait for "SM" after any PRI request line
        rejects(400, "PRI * HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n" .. H .. "\r\n")
        rejects(400, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
      end)
      it("answers 414 to a request line over the limit, even before its end arrives", function()
        local long = "GET /" .. ("a"):rep(200) .. " HTTP/1.1\r\n" .. H .. "\r\n"
        rejects(414, long, { max_request_line = 100 })
        rejects(414, "GET /" .. ("a"):rep(200), { max_request_line = 100 })
        assert.is_nil(req(long, { max_request_line = 300 }).error)
      end)
      it("answers 431 to a header section or header count over the limit", function()
        rejects(431, get("X-Big: " .. ("b"):rep(2000) .. "\r\n"), { max_header_size = 1024 })
        rejects(431, "GET / HTTP/1.1\r\n" .. ("X-Big: " .. ("b"):rep(2000)), { max_header_size = 1024 })
        local hs = {}
        for i = 1, 11 do hs[#hs + 1] = ("X-H%d: v\r\n"):format(i) end
        rejects(431, get(table.concat(hs)), { max_headers = 10 })
        table.remove(hs)
        table.remove(hs)
        assert.is_nil(req(get(table.concat(hs)), { max_headers = 10 }).error)
      end)
      it("bounds empty lines before a request", function()
        rejects(400, ("\r\n"):rep(600) .. get(), { max_header_size = 1024 })
      end)
    end)
  end)

  describe("responses", function()
    it("parses a Content-Length response and a chunked one with trailers", function()
      local r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
        .. "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 9\r\nSet-Cookie: a\r\n\r\n")
      assert.is_nil(r.error, r.text)
      assert.equal(2, #r.msgs)
      assert.equal(200, r.msgs[1].status)
      assert.equal("OK", r.msgs[1].reason)
      assert.equal("hello", r.msgs[1].body)
      assert.equal("abc", r.msgs[2].body)
      assert.same({ { "X-Sum", "9", "" } }, r.msgs[2].trailers)
    end)

    it("skips interim 1xx responses as messages of their own", function()
      local r = resp("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      assert.is_nil(r.error)
      assert.equal(3, #r.msgs)
      assert.same({ 100, 103, 200 }, { r.msgs[1].status, r.msgs[2].status, r.msgs[3].status })
      assert.equal("ok", r.msgs[3].body)
    end)

    it("never reads a body after 204 or 304, whatever the headers say", function()
      local r = resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"
        .. "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
        .. "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
      assert.is_nil(r.error, r.text)
      assert.equal(4, #r.msgs)
      for i = 1, 3 do assert.equal(0, r.msgs[i].body_len) end
      assert.equal("x", r.msgs[4].body)
    end)

    it("reads no body for a response to HEAD, decided at once or after a pause", function()
      local bytes = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      for _, flags in ipairs({ HEAD, HEAD + PAUSE_HEAD }) do
        local r = resp(bytes, { flags = flags })
        assert.is_nil(r.error, r.text)
        assert.equal(2, #r.msgs)
        assert.equal(1000, r.msgs[1].cl)
        assert.equal(0, r.msgs[1].body_len)
        assert.is_nil(r.partial)
      end
      local r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", { flags = PAUSE_HEAD })
      assert.equal("abc", r.msgs[1].body)
    end)

    it("reads a body without framing until close", function()
      local r = resp("HTTP/1.1 200 OK\r\n\r\nall of it\r\n\r\nHTTP/1.1 200 OK\r\n", { flags = EOF })
      assert.is_nil(r.error)
      assert.equal(1, #r.msgs)
      assert.equal("all of it\r\n\r\nHTTP/1.1 200 OK\r\n", r.msgs[1].body)
      assert.is_false(r.msgs[1].keepalive)
      assert.is_true(resp("HTTP/1.1 200 OK\r\n\r\nso far").partial)
    end)

    it("fails a truncated body at EOF", function()
      assert.equal(502, resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", { flags = EOF }).error)
      assert.equal(502, resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", { flags = EOF }).error)
    end)

    it("hands over the stream after 101", function()
      local r = resp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes")
      assert.is_true(r.msgs[1].upgrade)
      assert.equal(6, r.rest)
    end)

    it("accepts a status line without a reason", function()
      local r = resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
      assert.is_nil(r.error)
      assert.equal(2, #r.msgs)
    end)

    it("treats an HTTP/1.0 response with Transfer-Encoding as not reusable", function()
      local r = resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
      assert.is_nil(r.error)
      assert.equal("x", r.msgs[1].body)
      assert.is_false(r.msgs[1].keepalive)
    end)

    it("rejects ambiguous or malformed upstream framing with 502", function()
      rejects_resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
      rejects_resp("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello")
      rejects_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nX: 1\rY: 2\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\rX")
      rejects_resp("HTTP/1.1 200 OK\nContent-Length: 1\n\nx")
      rejects_resp("HTTP/1.1 200 OK\r\nX : 1\r\n\r\n")
      rejects_resp("HTTP/2.0 200 OK\r\n\r\n")
      rejects_resp("HTTP/1.1 200 O\1K\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
      rejects_resp("garbage garbage\r\n\r\n")
      rejects_resp("HTTP/1.1 200 OK\r\nX-Big: " .. ("x"):rep(2000) .. "\r\n\r\n", { max_header_size = 1024 })
    end)
  end)
end)
