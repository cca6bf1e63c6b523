-- Operations: access log formats, pid file and -s, SIGQUIT, connection limits, balancing,
-- and 1 GiB transfers in both directions with bounded memory.
local helpers = require "helpers"
local socket = require "socket"

local RSS_LIMIT_KB = os.getenv("ASAN_OPTIONS") and 600 * 1024 or 100 * 1024

local function read_file(path) return helpers.read_file(path) or "" end

describe("operations", function()
  local origin
  setup(function() origin = helpers.start_origin() end)
  teardown(function() helpers.stop_all() end)

  it("writes combined and JSON access logs without blocking", function()
    for _, fmt in ipairs({ "combined", "json" }) do
      local port = helpers.free_port()
      local log = helpers.tmpname("access-" .. fmt, ".log")
      local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, access_log = %q, access_log_format = %q,
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, log, fmt, origin.port), { wait_port = port })
      for i = 1, 5 do
        local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/size/%d?i=%d"):format(port, i, i),
          { headers = { ["User-Agent"] = "spec \"agent\"" } }))
        assert.equal(200, res.status)
      end
      local text = helpers.eventually(function()
        local t = read_file(log)
        local _, n = t:gsub("\n", "")
        return n >= 5 and t
      end, 3)
      if fmt == "combined" then
        -- exactly nginx's combined: nothing after the user agent
        assert.matches('\n127%.0%.0%.1 %- %- %[[^%]]+%] "GET /size/3%?i=3 HTTP/1%.1" 200 3 "%-" "spec \\"agent\\""\n', text)
      else
        assert.matches('"uri":"/size/3%?i=3","status":200,"bytes":3', text)
        for line in text:gmatch("[^\n]+") do assert.matches("^{.*}$", line) end
      end
      assert.equal(0, mr.stop())
    end
  end)

  it("answers -s stop and -s reload through the pid file, and exits on SIGQUIT", function()
    local port = helpers.free_port()
    local pid = helpers.tmpname("mr", ".pid")
    local conf = ([[
return { workers = 1, pid = %q, listen = { "127.0.0.1:%d" },
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(pid, port, origin.port)
    local mr = helpers.start_moonring(conf, { wait_port = port })
    assert.truthy(helpers.eventually(function() return read_file(pid):match("^%d+") end, 3))
    local _, rc = helpers.run(("%s -s reload -c %s 2>&1"):format(helpers.moonring_bin, mr.conf_path))
    assert.equal(0, rc)
    assert.truthy(helpers.eventually(function() return mr.log():find("SIGHUP", 1, true) end, 3))
    assert.equal(200, assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/")).status)
    _, rc = helpers.run(("%s -s stop -c %s 2>&1"):format(helpers.moonring_bin, mr.conf_path))
    assert.equal(0, rc)
    assert.equal(0, mr.wait(10))
    assert.equal("", read_file(pid)) -- removed on exit

    local mr2 = helpers.start_moonring(conf, { wait_port = port })
    local t0 = socket.gettime()
    local s = assert(helpers.connect(port)) -- an idle client must not delay SIGQUIT
    mr2.signal("QUIT")
    assert.is_not_nil(mr2.wait(5))
    assert.is_true(socket.gettime() - t0 < 3)
    s:close()
  end)

  it("tells with -v which loop backend a config would get", function()
    local path = helpers.tmpname("loop", ".lua")
    local f = assert(io.open(path, "w"))
    f:write('return { loop = "epoll", listen = { "127.0.0.1:1" }, routes = { { path = "/", handler = function() end } } }')
    f:close()
    local out, rc = helpers.run(("env -u MOONRING_LOOP %s -v -c %s 2>&1"):format(helpers.moonring_bin, path))
    assert.equal(0, rc, out)
    assert.matches("^moonring %d+%.%d+%.%d+\n", out)
    assert.matches("backend: epoll %(config=epoll%)", out)
  end)

  it("leaves connections over max_connections in the backlog until a slot frees", function()
    local port = helpers.free_port()
    helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, limits = { max_connections = 2 },
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, origin.port), { wait_port = port })
    local a = assert(helpers.connect(port))
    local b = assert(helpers.connect(port))
    helpers.sleep(0.2)
    local c = assert(helpers.connect(port)) -- accepted by the kernel, not by moonring yet
    c:send("GET /size/2 HTTP/1.1\r\nHost: x\r\n\r\n")
    local data, why = helpers.read(c, { responses = 1, timeout = 0.7 })
    assert.equal("timeout", why, data)
    a:close()
    data = helpers.read(c, { responses = 1, timeout = 3 })
    assert.matches("^HTTP/1%.1 200 ", data)
    b:close()
    c:close()
  end)

  it("balances by weight (smooth round-robin) and by least connections", function()
    local o2 = helpers.start_origin()
    local port = helpers.free_port()
    helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" },
  upstreams = {
    w = { servers = { "127.0.0.1:%d", { addr = "127.0.0.1:%d", weight = 3 } } },
    lc = { balance = "least_conn", servers = { "127.0.0.1:%d", "127.0.0.1:%d" } },
  },
  routes = { { path = "/lc/", upstream = "lc", strip_prefix = true }, { path = "/", upstream = "w" } } }
]]):format(port, origin.port, o2.port, origin.port, o2.port), { wait_port = port })
    local counts = {}
    for _ = 1, 40 do
      local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/x"))
      counts[res.headers["x-origin"]] = (counts[res.headers["x-origin"]] or 0) + 1
    end
    assert.equal(10, counts[tostring(origin.port)])
    assert.equal(30, counts[tostring(o2.port)])
    -- least_conn: while one request hangs on a server, the next ones go to the other
    local slow = helpers.spawn(("curl -sS -o /dev/null http://127.0.0.1:%d/lc/slow/1500"):format(port))
    helpers.sleep(0.3)
    local busy_seen = {}
    for _ = 1, 4 do
      local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/lc/x"))
      busy_seen[res.headers["x-origin"]] = true
    end
    local n = 0
    for _ in pairs(busy_seen) do n = n + 1 end
    assert.equal(1, n, "least_conn sent requests to the busy server")
    slow.wait(5)
  end)

  it("serves back-to-back large responses on one keep-alive connection without stalling", function()
    local port = helpers.free_port()
    helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" },
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, origin.port), { wait_port = port })
    -- sizes around the backpressure threshold (proxy.buffer_size, 64k): the response parser
    -- pauses on the last body span and must be resumed with no input left
    local s = assert(helpers.connect(port))
    local t0 = socket.gettime()
    for _, n in ipairs({ 65536, 65537, 131072, 200000, 65536, 1048576, 65536 }) do
      local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/size/%d"):format(port, n), { sock = s, timeout = 3 }))
      assert.equal(200, res.status)
      assert.equal(n, #res.body)
    end
    s:close()
    assert.is_true(socket.gettime() - t0 < 1.5, "took " .. (socket.gettime() - t0))
  end)

  it("does not retry a request the upstream reset on a fresh connection, nor a POST", function()
    local port = helpers.free_port()
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" },
  upstreams = { o = { servers = { "127.0.0.1:%d" }, tries = 3 } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, origin.port), { wait_port = port })
    assert.equal(502, assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/reset")).status)
    assert.equal(502, assert(helpers.http("POST", "http://127.0.0.1:" .. port .. "/reset", { body = "x" })).status)
    helpers.sleep(0.2)
    local _, n = mr.log():gsub("reset by peer %(GET /reset%)", "")
    assert.equal(1, n, mr.log())
    _, n = mr.log():gsub("reset by peer %(POST /reset%)", "")
    assert.equal(1, n, mr.log())
  end)

  it("passes 1 GiB down and 1 GiB up (chunked) with bounded memory", function()
    local port = helpers.free_port()
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, limits = { client_max_body_size = 0 },
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, origin.port), { wait_port = port })
    local size = 1024 * 1024 * 1024
    local max_rss = 0
    local function watch(h)
      local rc, peak = helpers.watch_rss(h, mr)
      max_rss = math.max(max_rss, peak)
      return rc
    end
    local dl = helpers.spawn(("curl -sS -o /dev/null -w '%%{http_code} %%{size_download}' --max-time 120 http://127.0.0.1:%d/size/%d")
      :format(port, size))
    assert.equal(0, watch(dl), dl.log())
    assert.equal("200 " .. size, dl.log())
    -- a chunked upload from a pipe: moonring decodes and re-chunks it
    local up = helpers.spawn(("(head -c %d /dev/zero | curl -sS -T - -H 'Content-Type: application/octet-stream' --max-time 120 http://127.0.0.1:%d/sink)")
      :format(size, port))
    assert.equal(0, watch(up), up.log())
    assert.matches("^" .. size .. " ", up.log())
    assert.is_true(max_rss < RSS_LIMIT_KB, "RSS reached " .. max_rss .. " KiB")
  end)
end)
