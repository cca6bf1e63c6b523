-- The test origin (mr-origin) and the spec helpers, exercised directly (no moonring).
local helpers = require "helpers"
local socket = require "socket"

describe("mr-origin + helpers", function()
  local origin, base

  setup(function()
    origin = helpers.start_origin()
    base = "http://127.0.0.1:" .. origin.port
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function get(path, opts)
    return assert(helpers.http("GET", base .. path, opts))
  end

  describe("helpers", function()
    it("free_port returns a bindable port", function()
      local port = helpers.free_port()
      assert.is_number(port)
      local s = assert(socket.bind("127.0.0.1", port))
      s:close()
    end)

    it("pattern and fnv1a32 match known values", function()
      assert.equal("abcdefghijklmnopqrstuvwxyzab", helpers.pattern(28))
      assert.equal("cdef", helpers.pattern(4, 2))
      assert.equal("811c9dc5", helpers.fnv1a32(""))
      assert.equal("e40c292c", helpers.fnv1a32("a"))
      assert.equal("bf9cf968", helpers.fnv1a32("foobar"))
    end)

    it("parse_responses splits pipelined responses and handles chunked", function()
      local stream = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        .. "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        .. "2\r\nhe\r\n3;ext=1\r\nllo\r\n0\r\nX-Trailer: t\r\n\r\n"
        .. "HTTP/1.1 204 No Content\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
      local list, err = helpers.parse_responses(stream)
      assert.equal(3, #list)
      assert.equal("incomplete", err)
      assert.same({ 200, "abc" }, { list[1].status, list[1].body })
      assert.same({ 201, "hello", "1, 2", "t" },
        { list[2].status, list[2].body, list[2].headers["x-a"], list[2].trailers["x-trailer"] })
      assert.same({ 204, "" }, { list[3].status, list[3].body })
    end)

    it("eventually retries until truthy and errors on timeout", function()
      local n = 0
      assert.equal(3, helpers.eventually(function() n = n + 1; return n >= 3 and n end, 2))
      assert.has_error(function() helpers.eventually(function() return false end, 0.2) end)
    end)

    it("curl returns stdout and exit code", function()
      local out, rc = helpers.curl("-o /dev/null -w '%{http_code} %{size_download}' " .. base .. "/size/1234")
      assert.equal(0, rc)
      assert.equal("200 1234", out)
      local _, rc2 = helpers.curl("--max-time 2 http://127.0.0.1:" .. helpers.free_port() .. "/")
      assert.is_not.equal(0, rc2)
    end)

    it("wrk runs bounded and reports no errors against the origin", function()
      local res = helpers.wrk(base .. "/", { c = 4, d = "1s" })
      assert.is_true(res.requests > 0, res.output)
      assert.same({ connect = 0, read = 0, write = 0, timeout = 0, status = 0 }, res.errors)
    end)

    it("spawn/stop report exit codes and stop_all-able processes die", function()
      local h = helpers.spawn("sh -c 'exit 7'")
      assert.equal(7, h.wait(5))
      local o2 = helpers.start_origin()
      assert.is_true(helpers.port_open(o2.port))
      assert.equal(0, o2.stop())   -- mr-origin exits 0 on SIGTERM
      assert.is_false(helpers.port_open(o2.port))
    end)
  end)

  describe("endpoints", function()
    it("/size/N streams N pattern bytes with Content-Length", function()
      local res = get("/size/100000")
      assert.equal(200, res.status)
      assert.equal("100000", res.headers["content-length"])
      assert.equal(tostring(origin.port), res.headers["x-origin"])
      assert.equal(helpers.pattern(100000), res.body)
      assert.equal("", get("/size/0").body)
    end)

    it("/size/N streams 1 GiB without buffering", function()
      local out, rc = helpers.curl("-o /dev/null -w '%{size_download}' " .. base .. "/size/1073741824")
      assert.equal(0, rc)
      assert.equal("1073741824", out)
      assert.is_true(helpers.rss_kb(origin.pid) < 50 * 1024)
    end)

    it("/chunked/N sends chunks of at most 8192 bytes", function()
      local raw = helpers.raw(origin.port, "GET /chunked/20000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.matches("Transfer%-Encoding: chunked\r\n", raw)
      assert.is_nil(raw:match("Content%-Length"))
      assert.matches("\r\n\r\n2000\r\n", raw, 1, true)
      assert.matches("\r\n0\r\n\r\n$", raw)
      local res = get("/chunked/100000")
      assert.equal(helpers.pattern(100000), res.body)
      assert.equal("", get("/chunked/0").body)
    end)

    it("/echo returns the body exactly (Content-Length and chunked)", function()
      local body = helpers.pattern(1024 * 1024, 5) .. "\0\r\n\255"
      local res = assert(helpers.http("POST", base .. "/echo", { body = body }))
      assert.equal(200, res.status)
      assert.equal(tostring(#body), res.headers["x-body-length"])
      assert.is_true(res.body == body, "echoed body differs")

      local raw = helpers.raw(origin.port, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "5\r\nhello\r\n1;foo=bar\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
        .. "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local list = helpers.parse_responses(raw)
      assert.equal(2, #list)
      assert.equal("hello world", list[1].body)
      assert.equal("11", list[1].headers["x-body-length"])
      assert.equal("ok " .. origin.port .. " GET /after\n", list[2].body)
    end)

    it("/sink reports byte count and FNV-1a", function()
      local body = helpers.pattern(3 * 1000 * 1000 + 7)
      local res = assert(helpers.http("POST", base .. "/sink", { body = body }))
      assert.equal(("%d %s\n"):format(#body, helpers.fnv1a32(body)), res.body)
      assert.equal("0 811c9dc5\n", assert(helpers.http("POST", base .. "/sink", { body = "" })).body)
    end)

    it("/head returns the raw request head", function()
      local head = "GET /head?q=1 HTTP/1.1\r\nHost: example.test\r\nX-Mixed-Case: Value  \r\nConnection: close\r\n\r\n"
      local raw = helpers.raw(origin.port, head)
      local res = helpers.parse_responses(raw)[1]
      assert.equal(200, res.status)
      assert.equal(head, res.body)
    end)

    it("/status/N answers N with a body, 204 and 304 without", function()
      for _, n in ipairs({ 200, 201, 404, 418, 500, 503 }) do
        local res = get("/status/" .. n)
        assert.equal(n, res.status)
        assert.equal("status " .. n .. "\n", res.body)
      end
      local raw = helpers.raw(origin.port,
        "GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local list = helpers.parse_responses(raw)
      assert.equal(3, #list)
      assert.same({ 204, 304, 200 }, { list[1].status, list[2].status, list[3].status })
      assert.is_nil(list[1].headers["content-length"])
      assert.is_nil(list[2].headers["content-length"])
      assert.equal("ok " .. origin.port .. " GET /x\n", list[3].body)
    end)

    it("HEAD gets GET's headers and no body", function()
      local raw = helpers.raw(origin.port,
        "HEAD /size/500 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /chunked/500 HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "HEAD /status/404 HTTP/1.1\r\nHost: x\r\n\r\nGET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local list = helpers.parse_responses(raw, { "HEAD", "HEAD", "HEAD", "GET" })
      assert.equal(4, #list)
      assert.equal("500", list[1].headers["content-length"])
      assert.equal("chunked", list[2].headers["transfer-encoding"])
      assert.equal(404, list[3].status)
      assert.equal("11", list[3].headers["content-length"])
      assert.equal("abc", list[4].body)
      local res = assert(helpers.http("HEAD", base .. "/size/77"))
      assert.equal("77", res.headers["content-length"])
      assert.equal("", res.body)
    end)

    it("pipelined requests are answered in order on one connection", function()
      local data, reason = helpers.raw(origin.port,
        "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
        .. "GET /size/5 HTTP/1.1\r\nHost: x\r\n\r\n", { responses = 3 })
      assert.equal("matched", reason)
      local list = helpers.parse_responses(data)
      assert.equal(3, #list)
      assert.equal("ok " .. origin.port .. " GET /one\n", list[1].body)
      assert.equal("xyz", list[2].body)
      assert.equal("abcde", list[3].body)
    end)

    it("Expect: 100-continue gets 100 before the body is sent", function()
      local s = assert(helpers.connect(origin.port))
      s:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
      local got = helpers.read(s, { pattern = "\r\n\r\n", timeout = 2 })
      assert.equal("HTTP/1.1 100 Continue\r\n\r\n", got)
      s:send("hello")
      local rest = helpers.read(s, { responses = 1, timeout = 2 })
      s:close()
      local res = helpers.parse_responses(rest)[1]
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
      -- the client helper skips the interim response
      local r2 = assert(helpers.http("POST", base .. "/echo", { body = "abc", headers = { Expect = "100-continue" } }))
      assert.equal(1, #r2.interim)
      assert.equal(100, r2.interim[1].status)
      assert.equal("abc", r2.body)
    end)

    it("/ws upgrades and echoes raw bytes", function()
      local s = assert(helpers.connect(origin.port))
      s:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
      local head = helpers.read(s, { pattern = "\r\n\r\n" })
      assert.matches("^HTTP/1.1 101 ", head)
      assert.matches("\r\nUpgrade: websocket\r\n", head)
      s:send("\129\5hello")
      assert.equal("\129\5hello", helpers.read(s, { until_bytes = 7 }))
      s:send("more bytes")
      assert.equal("more bytes", helpers.read(s, { until_bytes = 10 }))
      s:close()
      assert.equal(400, get("/ws").status)
    end)

    it("/count counts served requests, not itself", function()
      local before = tonumber(get("/count").body)
      get("/a"); get("/b"); get("/c")
      local res = get("/count")
      assert.equal(before + 3, tonumber(res.body))
      assert.is_true(tonumber(res.headers["x-connections"]) > 0)
    end)

    it("/slow/MS waits", function()
      local t0 = socket.gettime()
      local res = get("/slow/300")
      assert.equal("slow\n", res.body)
      assert.is_true(socket.gettime() - t0 >= 0.29)
    end)

    it("/slowbody/MS sends 5 bytes, pauses, sends 5 more", function()
      local s = assert(helpers.connect(origin.port))
      s:send("GET /slowbody/500 HTTP/1.1\r\nHost: x\r\n\r\n")
      local first = helpers.read(s, { pattern = "01234$", timeout = 2 })
      assert.matches("Content%-Length: 10\r\n", first)
      local more = helpers.read(s, { timeout = 0.2 })
      assert.equal("", more)
      assert.equal("56789", helpers.read(s, { until_bytes = 5, timeout = 2 }))
      s:close()
    end)

    it("/hang never answers; /hangbody sends 10 of 100 bytes", function()
      local data, reason = helpers.raw(origin.port, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 0.5 })
      assert.same({ "", "timeout" }, { data, reason })
      data, reason = helpers.raw(origin.port, "GET /hangbody HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 0.5 })
      assert.equal("timeout", reason)
      assert.matches("Content%-Length: 100\r\n\r\n0123456789$", data)
    end)

    it("/reset and /resetbody reset the connection", function()
      local data, reason = helpers.raw(origin.port, "GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.equal("", data)
      assert.is_true(reason == "connection reset by peer" or reason == "closed", reason)
      data = helpers.raw(origin.port, "GET /resetbody HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.matches("Content%-Length: 1000\r\n", data)
      local out, rc = helpers.curl(base .. "/resetbody -o /dev/null")
      assert.is_not.equal(0, rc, out)
    end)

    it("/close answers then closes", function()
      local data, reason = helpers.raw(origin.port, "GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.equal("closed", reason)
      local list = helpers.parse_responses(data)
      assert.equal(1, #list)
      assert.equal("bye\n", list[1].body)
      assert.equal("close", list[1].headers["connection"])
    end)

    it("/garbage, /short, /long misbehave as documented", function()
      assert.equal("garbage garbage\r\n\r\n", (helpers.raw(origin.port, "GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n")))
      local data, reason = helpers.raw(origin.port, "GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.equal("closed", reason)
      assert.matches("\r\nContent%-Length: 100\r\n", data)
      assert.equal(helpers.pattern(50), data:match("\r\n\r\n(.*)$"))
      data = helpers.raw(origin.port, "GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.matches("\r\nContent%-Length: 10\r\n", data)
      assert.equal(helpers.pattern(20), data:match("\r\n\r\n(.*)$"))
    end)

    it("/bigheaders sends a 100000-byte header", function()
      local res = get("/bigheaders")
      assert.equal(200, res.status)
      assert.equal(100000, #res.headers["x-big"])
    end)

    it("other paths answer ok <port> <method> <path>", function()
      assert.equal("ok " .. origin.port .. " GET /any/thing\n", get("/any/thing?x=y").body)
      local res = assert(helpers.http("DELETE", base .. "/d"))
      assert.equal("ok " .. origin.port .. " DELETE /d\n", res.body)
    end)

    it("HTTP/1.0 closes by default and keeps alive on request", function()
      local data, reason = helpers.raw(origin.port, "GET /a HTTP/1.0\r\n\r\n")
      assert.equal("closed", reason)
      assert.matches("\r\nConnection: close\r\n", data)
      data = helpers.raw(origin.port, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", { timeout = 0.5 })
      assert.matches("\r\nConnection: keep%-alive\r\n", data)
    end)

    it("malformed requests get 400 and a close; the origin survives", function()
      for _, bad in ipairs({
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\0\1\2\3\r\n\r\n",
      }) do
        local data, reason = helpers.raw(origin.port, bad)
        assert.equal("closed", reason, bad)
        assert.matches("^HTTP/1.1 400 ", data)
        assert.matches("\r\nConnection: close\r\n", data)
      end
      assert.equal(200, get("/still-alive").status)
    end)

    it("100 keep-alive requests reuse one connection", function()
      local s = assert(helpers.connect(origin.port))
      local conns = tonumber(get("/count").headers["x-connections"])
      for i = 1, 100 do
        local res = assert(helpers.http("GET", base .. "/k" .. i, { sock = s }))
        assert.equal("ok " .. origin.port .. " GET /k" .. i .. "\n", res.body)
      end
      s:close()
      -- only the /count request below opened a new connection
      assert.equal(conns + 1, tonumber(get("/count").headers["x-connections"]))
    end)
  end)
end)
