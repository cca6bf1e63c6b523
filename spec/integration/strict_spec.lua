-- Request strictness (issue 7), end to end: raw bytes from a socket into the real binary, in front
-- of mr-origin (which counts requests at /count and echoes the head it received at /head) and of a
-- capture upstream served by this process (to see the exact bytes moonring forwards). Every case
-- checks the status, Connection: close where framing is in doubt, and what the upstream saw.
local helpers = require "helpers"
local socket = require "socket"

describe("request strictness", function()
  local origin, mr, port, cap, cap_port

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    cap = assert(socket.bind("127.0.0.1", 0))
    cap_port = select(2, cap:getsockname())
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = {
    origin = { servers = { "127.0.0.1:%d" }, keepalive = 16 },
    capture = { servers = { "127.0.0.1:%d" }, keepalive = 0, tries = 1, read_timeout = "5s" },
  },
  routes = {
    { path = "/lua", handler = function(req) return req:respond(403, "no\n") end },
    { path = "/capture", upstream = "capture" },
    { path = "/", upstream = "origin", host = { "x", "routed.test" } },
  },
  limits = { max_request_line = "1k", max_header_size = "4k", max_headers = 20, header_timeout = "3s" },
}
]]):format(port, origin.port, cap_port))
  end)

  teardown(function()
    cap:close()
    helpers.stop_all()
  end)

  local function origin_count()
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count"))
    return tonumber(res.body)
  end

  -- Sends bytes on a fresh connection and reads until moonring closes it.
  local function exchange(bytes, timeout)
    local data, reason = helpers.raw(port, bytes, { timeout = timeout or 4 })
    return helpers.parse_responses(data), data, reason
  end

  -- The request is answered `status` with Connection: close, the connection is closed, and the
  -- origin received nothing.
  local function refused(status, bytes)
    local before = origin_count()
    local list, data, reason = exchange(bytes)
    assert.equal(1, #list, "expected exactly one response, got:\n" .. data)
    assert.equal(status, list[1].status, data)
    assert.equal("close", (list[1].headers["connection"] or ""):lower(), data)
    assert.equal("closed", reason, data)
    assert.equal(before, origin_count(), "the origin received a request")
    assert.is_true(mr.alive(), "moonring died:\n" .. mr.log())
    return list[1]
  end

  -- Sends bytes, takes the upstream connection moonring opens to the capture upstream, reads what
  -- arrives there (until `stop`, a Lua pattern, or EOF), optionally answers `reply`, then reads the
  -- client's side until close. Returns upstream bytes, how that read ended, client bytes.
  local function through_capture(bytes, stop, reply)
    local c = assert(helpers.connect(port))
    assert(c:send(bytes))
    cap:settimeout(3)
    local up = assert(cap:accept(), "moonring did not connect to the capture upstream")
    local got, how = helpers.read(up, { pattern = stop, timeout = 3 })
    if reply then up:send(reply) end
    local data = helpers.read(c, { timeout = 3 })
    up:close()
    c:close()
    return got, how, data
  end

  local function get(extra, target, version)
    return ("GET %s %s\r\nHost: x\r\n%s\r\n"):format(target or "/head", version or "HTTP/1.1", extra or "")
  end
  local function post(extra, body)
    return "POST /echo HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. "\r\n" .. (body or "")
  end
  local CHUNKED = "Transfer-Encoding: chunked\r\n"

  -- Strictly decodes a chunked body with no extensions and no trailers: returns the data and what
  -- follows the last chunk, or fails.
  local function dechunk(body)
    local out, pos = {}, 1
    while true do
      local size, nxt = body:match("^(%x+)\r\n()", pos)
      assert(size, "bad chunk line at " .. pos .. ":\n" .. body)
      local n = tonumber(size, 16)
      pos = nxt
      if n == 0 then
        assert(body:sub(pos, pos + 1) == "\r\n", "trailers or garbage after the last chunk:\n" .. body)
        return table.concat(out), body:sub(pos + 2)
      end
      out[#out + 1] = body:sub(pos, pos + n - 1)
      assert(body:sub(pos + n, pos + n + 1) == "\r\n", "chunk data not followed by CRLF:\n" .. body)
      pos = pos + n + 2
    end
  end
  local SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

  describe("Content-Length", function()
    it("with Transfer-Encoding: 400 and close", function()
      refused(400, post("Content-Length: 5\r\n" .. CHUNKED, "0\r\n\r\n" .. SMUGGLED))
      refused(400, post(CHUNKED .. "Content-Length: 5\r\n", "0\r\n\r\n" .. SMUGGLED))
    end)
    for _, c in ipairs({
      { "twice, equal", "Content-Length: 5\r\nContent-Length: 5\r\n" },
      { "twice, different", "Content-Length: 5\r\nContent-Length: 10\r\n" },
      { "a list", "Content-Length: 5, 10\r\n" },
      { "a plus sign", "Content-Length: +5\r\n" },
      { "a minus sign", "Content-Length: -5\r\n" },
      { "hex", "Content-Length: 0x5\r\n" },
      { "a space inside", "Content-Length: 1 0\r\n" },
      { "empty", "Content-Length: \r\n" },
      { "overflowing", "Content-Length: 99999999999999999999\r\n" },
    }) do
      it(c[1] .. ": 400 and close", function()
        refused(400, post(c[2], "hello" .. SMUGGLED))
      end)
    end
  end)

  describe("Transfer-Encoding", function()
    it("not ending in chunked: 400 and close", function()
      refused(400, post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"))
      refused(400, post("Transfer-Encoding: gzip\r\n", "hello"))
    end)
    it("chunked twice: 400 and close", function()
      refused(400, post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"))
      refused(400, post(CHUNKED .. CHUNKED, "0\r\n\r\n"))
    end)
    it("another coding before chunked: 501 and close", function()
      refused(501, post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"))
    end)
    it("in an HTTP/1.0 request: 400 and close", function()
      refused(400, "POST /echo HTTP/1.0\r\nHost: x\r\n" .. CHUNKED .. "\r\n5\r\nhello\r\n0\r\n\r\n")
    end)
  end)

  describe("header syntax", function()
    it("whitespace between a name and its colon: 400", function()
      refused(400, get("X-A : 1\r\n"))
      refused(400, "GET /head HTTP/1.1\r\nHost : x\r\n\r\n")
      refused(400, post("Content-Length : 5\r\n", "hello"))
      refused(400, post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"))
    end)
    it("obs-fold: 400", function()
      refused(400, get("X-A: 1\r\n folded\r\n"))
      refused(400, get("X-A: 1\r\n\tfolded\r\n"))
      refused(400, "GET /head HTTP/1.1\r\n Host: x\r\n\r\n")
    end)
    it("a header line without a colon, an empty name, non-token bytes in a name: 400", function()
      refused(400, get("NoColon\r\n"))
      refused(400, get(": empty\r\n"))
      refused(400, get("X(y): 1\r\n"))
      refused(400, get("X\"y: 1\r\n"))
      refused(400, get("X\200y: 1\r\n"))
    end)
    it("NUL, CR or LF in a value: 400", function()
      refused(400, get("X-V: a\0b\r\n"))
      refused(400, get("X-V: a\rb\r\n"))
      refused(400, get("X-V: a\nb\r\n"))
    end)
    it("a bare CR anywhere: 400", function()
      refused(400, "GET /head HTTP/1.1\r\nHost: x\r\n\rX")                    -- head ending on \r\n\rX
      refused(400, "GET /head HTTP/1.1\rHost: x\r\n\r\n")
      refused(400, "GET /head HTTP/1.1\r\nHost: x\r\nX: 1\rY: 2\r\n\r\n")
    end)
    it("bare LF line endings: 400", function()
      refused(400, "GET /head HTTP/1.1\nHost: x\n\n")
      refused(400, "GET /head HTTP/1.1\r\nHost: x\n\r\n")
    end)
  end)

  describe("Host", function()
    it("missing on HTTP/1.1: 400", function()
      refused(400, "GET /head HTTP/1.1\r\n\r\n")
    end)
    it("twice: 400", function()
      refused(400, "GET /head HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n")
    end)
    it("with userinfo or a path: 400", function()
      refused(400, "GET /head HTTP/1.1\r\nHost: user@x\r\n\r\n")
      refused(400, "GET /head HTTP/1.1\r\nHost: x/evil\r\n\r\n")
      refused(400, get(nil, "http://user@routed.test/head"))
    end)
    it("absolute-form targets regenerate Host, for routing and for the origin", function()
      local list, data = exchange("GET http://routed.test:8080/head?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.equal(1, #list, data)
      assert.equal(200, list[1].status, data)
      local seen = list[1].body
      assert.matches("^GET /head%?q=1 HTTP/1%.1\r\n", seen)
      assert.matches("\r\n[Hh]ost: routed%.test:8080\r\n", seen)
      assert.is_nil(seen:find("Host: x\r\n", 1, true), seen)
      -- the authority decides the route, not the Host header
      list, data = exchange("GET http://elsewhere.test/head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.equal(404, list[1] and list[1].status, data)
    end)
  end)

  describe("request line and limits", function()
    it("HTTP/0.9: 400", function()
      refused(400, "GET /head\r\n\r\n")
    end)
    it("unknown versions: 505", function()
      refused(505, get(nil, nil, "HTTP/2.0"))
      refused(505, get(nil, nil, "HTTP/1.2"))
      refused(505, get(nil, nil, "HTTP/0.9"))
    end)
    it("malformed versions: 400", function()
      refused(400, get(nil, nil, "HTTP/1.1 "))
      refused(400, get(nil, nil, "http/1.1"))
    end)
    it("a request line over the limit: 414", function()
      refused(414, "GET /" .. ("a"):rep(2000) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    end)
    it("a header section over the limit: 431", function()
      refused(431, get("X-Big: " .. ("b"):rep(5000) .. "\r\n"))
    end)
    it("a header count over the limit: 431", function()
      local hs = {}
      for i = 1, 30 do hs[#hs + 1] = ("X-H%d: v\r\n"):format(i) end
      refused(431, get(table.concat(hs)))
    end)
    it("CONNECT: 405", function()
      refused(405, "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")
    end)
  end)

  describe("chunked bodies", function()
    local head = "POST /capture HTTP/1.1\r\nHost: x\r\n" .. CHUNKED .. "\r\n"

    -- What reached the upstream is the head and at most the valid chunk, never an end, and the
    -- connection to it was closed; the client got status + close.
    local function cut(status, bad_part)
      local got, how, data = through_capture(head .. "5\r\nhello\r\n" .. bad_part .. "0\r\n\r\n" .. SMUGGLED)
      local list = helpers.parse_responses(data)
      assert.equal(1, #list, data)
      assert.equal(status, list[1].status, data)
      assert.equal("close", (list[1].headers["connection"] or ""):lower(), data)
      assert.equal("closed", how, "the upstream connection stayed open:\n" .. got)
      local fwd_head, body = got:match("^(.-\r\n\r\n)(.*)$")
      if fwd_head then
        assert.matches("^POST /capture HTTP/1%.1\r\n", fwd_head)
        local valid = "5\r\nhello\r\n"
        assert.equal(valid:sub(1, #body), body, "the upstream received more than the valid chunk")
      else
        assert.is_nil(got:find("\r\n\r\n", 1, true), got)
      end
    end

    for _, size in ipairs({ "0x5", "+5", "-5", " 5", "5 ", "", "1000000000000000" }) do
      it(("chunk size %q: 400 and close, upstream cut off"):format(size), function()
        cut(400, size .. "\r\nworld\r\n")
      end)
    end
    it("chunk data not followed by CRLF: 400 and close, upstream cut off", function()
      cut(400, "5\r\nworldXX")
      cut(400, "5\r\nworld\rX")
    end)
    it("a bare CR in a chunk line: 400 and close", function()
      cut(400, "5\rX\r\nworld\r\n")
    end)
    it("chunk extensions too long: 400 and close", function()
      cut(400, "5;e=" .. ("v"):rep(5000) .. "\r\nworld\r\n")
    end)

    it("strips chunk extensions and never forwards trailers", function()
      local got, _, data = through_capture(head .. "5;a=b;c=\"d e\"\r\nhello\r\n6;x\r\n world\r\n0;end=1\r\n"
        .. "X-Trailer: t\r\nContent-Length: 99\r\nHost: evil\r\n\r\n", "\r\n0\r\n\r\n$",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      local list = helpers.parse_responses(data)
      assert.equal(200, list[1] and list[1].status, data)
      local fwd_head, body = got:match("^(.-\r\n\r\n)(.*)$")
      assert.is_string(fwd_head, got)
      assert.matches("\r\nTransfer%-Encoding: chunked\r\n", fwd_head)
      assert.is_nil(fwd_head:lower():find("trailer", 1, true), fwd_head)
      assert.is_nil(fwd_head:find("evil", 1, true), fwd_head)
      assert.is_nil(body:find(";", 1, true), "a chunk extension was forwarded:\n" .. body)
      assert.is_nil(body:find("Trailer", 1, true), "a trailer was forwarded:\n" .. body)
      local decoded, rest = dechunk(body)
      assert.equal("hello world", decoded, body)
      assert.equal("", rest, "bytes after the last chunk:\n" .. body)
    end)
  end)

  describe("bodies on GET, HEAD and OPTIONS", function()
    for _, method in ipairs({ "GET", "OPTIONS", "HEAD" }) do
      it(method .. " with a Content-Length body and a pipelined request: exactly CL bytes consumed", function()
        local before = origin_count()
        local body = "GET /smuggled HTTP"
        local data = helpers.raw(port, method .. " /head HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #body .. "\r\n\r\n"
          .. body .. "GET /head?second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", { timeout = 4 })
        local list = helpers.parse_responses(data, { method, "GET" })
        assert.equal(2, #list, data)
        assert.equal(200, list[1].status)
        assert.equal(200, list[2].status)
        if method ~= "HEAD" then
          assert.matches("^" .. method .. " /head HTTP/1%.1\r\n", list[1].body)
          assert.matches("\r\n[Cc]ontent%-[Ll]ength: " .. #body .. "\r\n", list[1].body)
        end
        assert.matches("^GET /head%?second HTTP/1%.1\r\n", list[2].body)
        assert.equal(before + 2, origin_count(), "the origin did not see exactly the two requests")
      end)
    end
  end)

  describe("Expect", function()
    it("other than 100-continue: 417", function()
      refused(417, post("Expect: something-else\r\nContent-Length: 5\r\n", "hello"))
    end)
  end)

  describe("early final responses", function()
    it("an upstream answering before the body is read closes the client connection", function()
      local c = assert(helpers.connect(port))
      assert(c:send("POST /capture HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"))
      cap:settimeout(3)
      local up = assert(cap:accept())
      helpers.read(up, { pattern = "\r\n\r\n", timeout = 3 })
      up:send("HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
      local first = helpers.read(c, { responses = 1, timeout = 3 })
      local res = helpers.parse_responses(first)[1]
      assert.is_table(res, first)
      assert.equal(403, res.status)
      assert.equal("close", (res.headers["connection"] or ""):lower(), first)
      -- the rest of the "body" is a request: it must never be parsed as one
      c:send(("x"):rep(100 - #SMUGGLED) .. SMUGGLED)
      local _, reason = helpers.read(c, { timeout = 3 })
      assert.equal("closed", reason)
      local rest = helpers.read(up, { timeout = 0.5 })
      assert.is_nil(rest:find("/smuggled", 1, true), rest)
      up:close()
      c:close()
      cap:settimeout(0.3)
      local again = cap:accept()
      assert.is_nil(again, "moonring opened another upstream connection")
    end)

    it("a local answer (handler) before the body is read closes the connection (no 0.CL desync)", function()
      local before = origin_count()
      local list, data = exchange("POST /lua HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #SMUGGLED .. "\r\n\r\n", 2)
      assert.equal(403, list[1] and list[1].status, data)
      assert.equal("close", (list[1].headers["connection"] or ""):lower(), data)
      assert.equal(before, origin_count())
    end)

    it("a 404 before the body is read closes the connection (no 0.CL desync)", function()
      local before = origin_count()
      local list, data = exchange("POST /head HTTP/1.1\r\nHost: unrouted.test\r\nContent-Length: " .. #SMUGGLED .. "\r\n\r\n", 2)
      assert.equal(404, list[1] and list[1].status, data)
      assert.equal("close", (list[1].headers["connection"] or ""):lower(), data)
      assert.equal(before, origin_count())
    end)

    it("a local answer after the whole body arrived keeps the connection and ignores no bytes", function()
      local before = origin_count()
      local data = helpers.raw(port, "POST /lua HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #SMUGGLED .. "\r\n\r\n"
        .. SMUGGLED .. "GET /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", { timeout = 4 })
      local list = helpers.parse_responses(data)
      assert.equal(403, list[1] and list[1].status, data)
      -- either the connection closes after the 403, or the next request is served; never /smuggled
      if list[2] then assert.matches("^GET /head HTTP/1%.1\r\n", list[2].body) end
      assert.is_true(origin_count() <= before + 1)
    end)
  end)

  it("is still alive and serving", function()
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/hello", { headers = { Host = "x" } }))
    assert.equal(200, res.status)
  end)
end)
