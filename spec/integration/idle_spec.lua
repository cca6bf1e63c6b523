-- Memory per idle keep-alive connection: a regression guard, not a benchmark (bench/idle_conns
-- measures it next to nginx and haproxy). An idle connection holds its socket, session and timer
-- only: about 350 bytes of RSS today (400 under epoll, which adds its per-fd slot). The bound is
-- the issue's target, 1 KiB, far enough above that noise does not trip it (before the request
-- core's redesign an idle connection cost about 7,800 bytes). scripts/test runs it on both loop
-- backends (MOONRING_LOOP).
local helpers = require "helpers"

local N = 2000
-- ASan's redzones, allocator metadata and quarantine (freed memory is held back for a while)
-- make every allocation dearer, and the freed ones count too: scale the bound (about 550 B there).
local SANITIZED = os.getenv("ASAN_OPTIONS") ~= nil
local BOUND = SANITIZED and 4 * 1024 or 1024

describe("idle keep-alive connections", function()
  local origin, mr, port
  local conns = {}

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { { addr = "127.0.0.1:%d", backlog = 4096 } },
  limits = { max_connections = %d, keepalive_timeout = "10m" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" }, keepalive = 4 } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(port, N + 100, origin.port))
  end)

  teardown(function()
    for _, c in ipairs(conns) do c:close() end
    helpers.stop_all()
  end)

  it(("cost less than %d bytes of RSS each (%d connections, one request each)"):format(BOUND, N), function()
    local url = "http://127.0.0.1:" .. port .. "/"
    -- Warm-up: the upstream pool, the request cache and the VM's first allocations belong to
    -- the baseline, not to the connections; so do the provided buffers (512, taken in turn, two
    -- per request: one from each socket), whose first page each request touches.
    local warm = assert(helpers.connect(port))
    for _ = 1, 600 do
      local res = assert(helpers.http("GET", url, { sock = warm }))
      assert.equal(200, res.status)
    end
    warm:close()
    helpers.sleep(0.3)
    local before = mr.rss_kb()

    for i = 1, N do
      local c = assert(helpers.connect(port))
      conns[i] = c
      local res, err = helpers.http("GET", url, { sock = c })
      assert(res, ("request %d: %s"):format(i, tostring(err)))
      assert.equal(200, res.status)
      assert.is_nil(res.headers.connection) -- kept alive
    end
    helpers.sleep(0.5)
    local after = mr.rss_kb()
    local per_conn = (after - before) * 1024 / N
    print(("\n  idle connections: RSS %d -> %d KiB, %.0f B per connection (bound %d)"):format(before, after, per_conn,
      BOUND))

    -- Still open and idle on both sides: nothing was closed to save memory.
    for i = 1, N, 97 do
      conns[i]:settimeout(0)
      local _, err = conns[i]:receive(1)
      assert.equal("timeout", err, "connection " .. i .. " was closed")
    end
    local res = assert(helpers.http("GET", url, { sock = conns[N] }))
    assert.equal(200, res.status)
    assert.is_true(per_conn < BOUND, ("%.0f B per idle connection (RSS %d -> %d KiB)"):format(per_conn, before, after))
  end)
end)
