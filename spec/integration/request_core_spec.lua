-- The request core (src/proxy/req.c, src/session/h1.c): one request object per request with one
-- reset boundary, so nothing of a pipelined request (headers, filter edits, Lua ctx, target
-- override, body, status) leaks into the next on the same connection; local responses with every
-- registered reason phrase, a Date, and a Server field a filter or the config can drop; clear errors
-- for bodies Lua cannot send; an access log line for requests the parser rejects.
local helpers = require "helpers"

local function read_file(p) return helpers.read_file(p) or "" end

describe("request core", function()
  local origin, mr, port, log

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    log = helpers.tmpname("access", ".log")
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  access_log = %q,
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/lua", filters = { {
        on_request = function(req, ctx) ctx.before = ctx.mark; ctx.mark = req.path end,
        on_response = function(res, ctx) res:set_header("x-mark", ctx.mark) end,
      } },
      handler = function(req, ctx)
        local body = req:body() or ""
        return 200, table.concat({ req.path, tostring(ctx.before), tostring(req:header("x-a")),
          tostring(req:header("x-b")), body, req.query }, "|") .. "\n"
      end },
    { path = "/p", strip_prefix = true, upstream = "origin", filters = { {
        on_request = function(req)
          if req:header("x-a") then req:set_path("/size/3"); req:set_header("x-injected", "1") end
        end } } },
    { path = "/status", handler = function(req) return tonumber(req:arg("s")), "" end },
    { path = "/noserver", handler = function(req) return 200, "x\n" end,
      filters = { { on_response = function(res) res:del_header("server") end } } },
    { path = "/table", handler = function(req) return 200, { "not", "a", "string" } end },
  },
}
]]):format(port, log, origin.port), { wait_port = port })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("lets nothing leak between pipelined requests on one connection", function()
    local reqs = {
      "POST /lua/1?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc",
      "GET /p/head HTTP/1.1\r\nHost: h\r\nX-B: 2\r\n\r\n",
      "GET /lua/3 HTTP/1.1\r\nHost: h\r\n\r\n",
      "POST /p/head HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
      "GET /p/head HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /lua/6 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    }
    local data = helpers.raw(port, table.concat(reqs), { timeout = 10 })
    local list = helpers.parse_responses(data or "")
    assert.equal(6, #list, data)
    assert.equal("/lua/1|nil|1|nil|abc|q=1\n", list[1].body)
    assert.equal("/lua/1", list[1].headers["x-mark"])
    -- the origin echoes the head it received: none of request 1's fields or edits
    local head2 = list[2].body
    assert.truthy(head2:find("^GET /head HTTP/1.1\r\n"), head2)
    assert.falsy(head2:lower():find("x-a:", 1, true), head2)
    assert.falsy(head2:lower():find("x-injected", 1, true), head2)
    assert.truthy(head2:lower():find("x-b: 2", 1, true), head2)
    assert.equal("/lua/3|nil|nil|nil||\n", list[3].body)
    assert.equal("/lua/3", list[3].headers["x-mark"])
    -- request 4's filter overrode the target and added a field
    assert.equal(200, list[4].status)
    assert.equal(3, #list[4].body)
    local head5 = list[5].body
    assert.truthy(head5:find("^GET /head HTTP/1.1\r\n"), head5)
    assert.falsy(head5:lower():find("x-injected", 1, true), head5)
    assert.falsy(head5:lower():find("transfer-encoding", 1, true), head5)
    assert.equal("/lua/6|nil|nil|nil||\n", list[6].body)
  end)

  it("forwards an upstream's trailer fields in a chunked response", function()
    local data = helpers.raw(port, "GET /p/trailers HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    assert.truthy(data:find("\r\n\r\n5\r\nhello\r\n0\r\n", 1, true), data)
    assert.truthy(data:find("\r\nX-Checksum: abc123\r\n", 1, true), data)
    assert.truthy(data:find("\r\nGrpc%-Status: 0\r\n\r\n$"), data)
  end)

  it("sends the registered reason phrase of every status, with a Date", function()
    local phrases = { [200] = "OK", [308] = "Permanent Redirect", [422] = "Unprocessable Content",
                      [425] = "Too Early", [451] = "Unavailable For Legal Reasons", [507] = "Insufficient Storage",
                      [599] = "Unknown" }
    for st, phrase in pairs(phrases) do
      local data = helpers.raw(port, "GET /status?s=" .. st .. " HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
      assert.truthy(data:find("^HTTP/1.1 " .. st .. " " .. phrase .. "\r\n"), data)
      local date = data:match("\r\n[Dd]ate: ([^\r]+)\r\n")
      assert.truthy(date and date:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"), data)
      assert.truthy(data:find("\r\nServer: moonring\r\n", 1, true), data)
    end
  end)

  it("lets a filter drop the Server field of a local response", function()
    local data = helpers.raw(port, "GET /noserver HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 200 OK\r\n"), data)
    assert.falsy(data:lower():find("\r\nserver:", 1, true), data)
  end)

  it("answers 500 with a clear error when a handler's body is not a string", function()
    local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/table"):format(port)))
    assert.equal(500, res.status)
    assert.falsy(res.body:find("table: 0x", 1, true))
    assert.truthy(helpers.eventually(function()
      return mr.log():find("body must be a string, got table", 1, true)
    end, 3), mr.log())
  end)

  it("logs a request the parser rejects with its own method and version", function()
    local data = helpers.raw(port, "PUT /x HTTP/1.0\r\nBad Header: y\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "), data)
    data = helpers.raw(port, "GARBAGE\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "), data)
    local text = helpers.eventually(function()
      local t = read_file(log)
      return t:find('"PUT /x HTTP/1.0" 400', 1, true) and t:find('"-" 400', 1, true) and t
    end, 3)
    assert.truthy(text, read_file(log))
    assert.falsy(read_file(log):find('"DELETE', 1, true))
  end)
end)

describe("request core at a graceful stop", function()
  it("writes the access log line of every request that finishes while the worker drains", function()
    local origin = helpers.start_origin()
    for _, backend_run in ipairs({ 1, 2, 3 }) do
      local port = helpers.free_port()
      local log = helpers.tmpname("access-stop" .. backend_run, ".log")
      local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, access_log = %q,
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, log, origin.port), { wait_port = port })
      -- slow requests in flight when the stop arrives, each on its own connection
      local socks = {}
      for i = 1, 8 do
        local _, _, s = helpers.raw(port, "GET /slow/300 HTTP/1.1\r\nHost: h\r\nX-N: " .. i .. "\r\n\r\n",
          { keep_open = true, timeout = 0.05 })
        socks[#socks + 1] = s
      end
      helpers.sleep(0.1)
      assert.equal(0, mr.stop("TERM", 10))
      for _, s in ipairs(socks) do s:close() end
      local text = read_file(log)
      local _, n = text:gsub('"GET /slow/300 HTTP/1.1" 200 ', "")
      assert.equal(8, n, text)
      assert.falsy(text:find("[%z\1-\8\11\12\14-\31]"), "garbage bytes in the log")
    end
    origin.stop()
  end)
end)
