-- How a client connection ends after its last response: at once when the client asked for the
-- close (Connection: close, every byte of its request read), with a lingering close (write side
-- shut, input drained) when the proxy ends a connection the client may still be writing to, so
-- that the client reads its response instead of a reset.
local helpers = require "helpers"

describe("closing a client connection", function()
  local origin, port, mr

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  limits = { keepalive_requests = 2 },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(port, origin.port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function body_of(data)
    local res = helpers.parse_responses(data)[1]
    return res and res.status, res and res.body, res and res.headers
  end

  it("closes at once after the response when the client asked for it", function()
    -- A first request opens the pooled upstream connection, so the count below is the idle one.
    assert.equal(200, assert(helpers.http("GET", ("http://127.0.0.1:%d/size/10"):format(port))).status)
    local idle = helpers.fd_count(mr.pid)
    local data, reason, sock = helpers.raw(port, "GET /size/100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      { timeout = 3, keep_open = true })
    assert.equal("closed", reason)
    local status, body, headers = body_of(data)
    assert.equal(200, status)
    assert.equal(100000, #body)
    assert.equal("close", headers["connection"])
    -- The client keeps its end open: a lingering close would hold the socket for 2 s.
    assert.truthy(helpers.eventually(function() return helpers.fd_count(mr.pid) == idle end, 1),
      ("moonring still holds the connection: %d descriptors, %d when idle"):format(helpers.fd_count(mr.pid), idle))
    sock:close()
  end)

  it("still answers fully a Connection: close request followed by more bytes", function()
    local data, reason = helpers.raw(port, "GET /size/100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      .. "GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 3 })
    assert.equal("closed", reason)
    local status, body = body_of(data)
    assert.equal(200, status)
    assert.equal(100000, #body)
  end)

  it("lingers when it ends a keep-alive connection itself (keepalive_requests)", function()
    -- Three pipelined keep-alive requests: the second response says close, the third request is
    -- unread input that must not turn into a reset before the client read the second response.
    local req = "GET /size/100000 HTTP/1.1\r\nHost: x\r\n\r\n"
    local data, reason = helpers.raw(port, req .. req .. req, { timeout = 3 })
    assert.equal("closed", reason)
    local list = helpers.parse_responses(data)
    assert.equal(2, #list)
    assert.equal(100000, #list[2].body)
    assert.equal("close", list[2].headers["connection"])
  end)
end)
