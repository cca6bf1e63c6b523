-- Upstream faults after the response has started, and stale pooled connections: the client
-- gets a clean close (never a hang and never bytes the origin did not promise), a retry happens
-- only where it is safe, and the worker keeps serving.
local helpers = require "helpers"
local socket = require "socket"

-- Sends one request on a fresh connection and reads until the proxy closes it or `timeout`
-- passes. Returns everything read, whether the peer closed, and the seconds it took.
local function until_close(port, path, timeout)
  local c = assert(helpers.connect(port))
  c:settimeout(timeout)
  local t0 = socket.gettime()
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: t\r\n\r\n"))
  local parts = {}
  local closed = false
  while true do
    local data, err, partial = c:receive(8192)
    local got = data or partial
    if got and #got > 0 then parts[#parts + 1] = got end
    if err == "closed" then closed = true break end
    if err then break end
  end
  c:close()
  return table.concat(parts), closed, socket.gettime() - t0
end

local function body_of(raw)
  local i = raw:find("\r\n\r\n", 1, true)
  return i and raw:sub(i + 4) or ""
end

describe("upstream faults", function()
  local origin, port, base

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = {
    origin = { servers = { "127.0.0.1:%d" }, keepalive = 4, read_timeout = "1s" },
  },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(port, origin.port))
  end)

  teardown(function() helpers.stop_all() end)

  local function still_serving()
    local res = assert(helpers.http("GET", base .. "/after"))
    assert.equal(200, res.status)
    assert.equal("ok " .. origin.port .. " GET /after\n", res.body)
  end

  it("closes the client connection when the origin resets mid-body", function()
    local raw, closed, took = until_close(port, "/resetbody", 5)
    assert.matches("^HTTP/1%.1 200 ", raw)
    assert.matches("\r\ncontent%-length: 1000\r\n", raw:lower())
    assert.is_true(closed, "connection left open")
    assert.is_true(#body_of(raw) < 1000, "got a complete body from a reset origin")
    assert.is_true(took < 3, "took " .. took .. " s")
    still_serving()
  end)

  it("closes the client connection when the origin's body is shorter than its Content-Length", function()
    local raw, closed, took = until_close(port, "/short", 5)
    assert.matches("^HTTP/1%.1 200 ", raw)
    assert.is_true(closed, "connection left open")
    assert.equal(50, #body_of(raw))
    assert.is_true(took < 3, "took " .. took .. " s")
    still_serving()
  end)

  it("forwards exactly Content-Length bytes when the origin sends more", function()
    local c = assert(helpers.connect(port))
    c:settimeout(5)
    assert(c:send("GET /long HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n"))
    local res = helpers.read_response(c)
    assert.equal(200, res.status)
    assert.equal(10, #res.body)
    -- The surplus never shows up as (part of) the next response on this connection.
    local nxt = helpers.read_response(c)
    assert.equal(200, nxt.status)
    assert.equal("ok " .. origin.port .. " GET /next\n", nxt.body)
    c:close()
    still_serving()
  end)

  it("closes the client connection when the origin hangs after the headers (read_timeout)", function()
    local raw, closed, took = until_close(port, "/hangbody", 6)
    assert.matches("^HTTP/1%.1 200 ", raw)
    assert.is_true(closed, "connection left open")
    assert.equal("0123456789", body_of(raw))
    assert.is_true(took >= 0.9 and took < 4, "took " .. took .. " s")
    still_serving()
  end)

  it("retries a GET on a new connection when the pooled one was closed before the response", function()
    local res = assert(helpers.http("GET", base .. "/dropnext"))
    assert.equal(200, res.status)
    local before = assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count"))
    local conns = tonumber(before.headers["x-connections"])
    -- This request goes to the pooled connection the origin will drop unanswered.
    res = assert(helpers.http("GET", base .. "/retried"))
    assert.equal(200, res.status)
    assert.equal("ok " .. origin.port .. " GET /retried\n", res.body)
    local after = assert(helpers.http("GET", "http://127.0.0.1:" .. origin.port .. "/count"))
    assert.is_true(tonumber(after.headers["x-connections"]) >= conns + 2, "no new upstream connection")
  end)

  it("does not retry a POST on a stale pooled connection: 502", function()
    local res = assert(helpers.http("GET", base .. "/dropnext"))
    assert.equal(200, res.status)
    res = assert(helpers.http("POST", base .. "/echo", { body = "payload" }))
    assert.equal(502, res.status)
    still_serving()
  end)
end)
