-- Logs operators can use: named formats with nginx variables (text and JSON), access_log as a
-- table, the stock JSON log filter writing to the access log, reopening after logrotate moved the
-- files (SIGUSR1 and moonring -s reopen), and the client address from trusted proxies (real_ip).
local helpers = require "helpers"
local json = require "dkjson"

local function lines(path)
  local t = {}
  for l in (helpers.read_file(path) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

local function wait_lines(path, n)
  return helpers.eventually(function() local t = lines(path); return #t >= n and t end, 5)
end

describe("access logs", function()
  local origin
  setup(function() origin = helpers.start_origin() end)
  teardown(function() helpers.stop_all() end)

  it("writes named text and JSON formats with upstream fields, route and headers", function()
    local port = helpers.free_port()
    local log = helpers.tmpname("main", ".log")
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" },
  log_formats = {
    main = '$remote_addr "$request" $status $body_bytes_sent $upstream_addr $upstream_status $route $upstream rt=$request_time urt=$upstream_response_time uct=$upstream_connect_time id=$request_id ua="$http_user_agent" x=${http_x_thing}end',
    j = { escape = "json", format = '{"status":$status,"uri":"$request_uri","up":"$upstream_addr","ua":"$http_user_agent","t":"$time_iso8601"}' },
  },
  access_log = { path = %q, format = "main" },
  upstreams = { o = { servers = { "127.0.0.1:%d" } } },
  routes = { { name = "here", exact = "/here", handler = function() return 201, "made" end },
             { name = "api", path = "/", upstream = "o" } } }
]]):format(port, log, origin.port))
    assert.equal(200, helpers.http("GET", ("http://127.0.0.1:%d/size/5?q=1"):format(port),
      { headers = { ["User-Agent"] = 'agent "quoted"', ["X-Request-Id"] = "abc-123", ["X-Thing"] = "t" } }).status)
    assert.equal(201, helpers.http("GET", ("http://127.0.0.1:%d/here"):format(port)).status)
    local t = assert(wait_lines(log, 2))
    local up = "127.0.0.1:" .. origin.port
    assert.matches('^127%.0%.0%.1 "GET /size/5%?q=1 HTTP/1%.1" 200 5 ' .. up:gsub("%.", "%%.") ..
      ' 200 api o rt=%d+%.%d%d%d urt=%d+%.%d%d%d uct=%d+%.%d%d%d id=abc%-123 ua="agent \\x22quoted\\x22" x=tend$', t[1])
    assert.matches('^127%.0%.0%.1 "GET /here HTTP/1%.1" 201 4 %- %- here %- rt=', t[2])
    -- switch to the JSON format by reload
    local conf = helpers.read_file(mr.conf_path):gsub('format = "main"', 'format = "j"')
    helpers.write_file(mr.conf_path, conf)
    mr.signal("HUP")
    assert.truthy(helpers.eventually(function() return mr.log():find("generation 2 serving", 1, true) end, 5))
    assert.equal(200, helpers.http("GET", ("http://127.0.0.1:%d/size/7"):format(port),
      { headers = { ["User-Agent"] = 'a "b" \\ c' } }).status)
    t = assert(wait_lines(log, 3))
    local doc = assert(json.decode(t[3]), t[3])
    assert.equal(200, doc.status)
    assert.equal("/size/7", doc.uri)
    assert.equal(up, doc.up)
    assert.equal('a "b" \\ c', doc.ua)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[+-]%d%d:%d%d$", doc.t)
    assert.equal(0, mr.stop())
  end)

  it("refuses unknown variables and formats with the key path", function()
    local ok, out = helpers.moonring_check([[
return { listen = { "127.0.0.1:1" }, log_formats = { main = "$status $nonsense" },
  routes = { { path = "/", handler = function() end } } }]])
    assert.is_false(ok)
    assert.matches("log_formats%.main: unknown variable %$nonsense", out)
    ok, out = helpers.moonring_check([[
return { listen = { "127.0.0.1:1" }, access_log = { path = "x.log", format = "mian" }, log_formats = { main = "$status" },
  routes = { { path = "/", handler = function() end } } }]])
    assert.is_false(ok)
    assert.matches('access_log%.format: unknown format "mian" %(known: "combined", "json", "main"%)', out)
  end)

  it("has the stock JSON filter write proper JSON lines, upstream fields filled, to the access log", function()
    local port = helpers.free_port()
    local log = helpers.tmpname("jsonf", ".log")
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, access_log = %q,
  upstreams = { o = { servers = { "127.0.0.1:%d" } } },
  routes = { { name = "api", path = "/", upstream = "o", filters = { "moonring.filters.access_log_json" } },
             } }
]]):format(port, log, origin.port))
    for i = 1, 3 do
      assert.equal(200, helpers.http("GET", ("http://127.0.0.1:%d/size/%d"):format(port, i)).status)
    end
    local t = assert(wait_lines(log, 3))
    assert.equal(3, #t) -- the filter's line replaces the combined one
    for i, l in ipairs(t) do
      local doc = assert(json.decode(l), l)
      assert.equal(200, doc.status)
      assert.equal("/size/" .. i, doc.path)
      assert.equal("127.0.0.1:" .. origin.port, doc.upstream_addr)
      assert.equal(200, doc.upstream_status)
      assert.is_number(doc.upstream_response_time)
    end
    assert.is_nil(mr.log():find('"upstream_addr"', 1, true)) -- nothing in the error log
    assert.equal(0, mr.stop())
  end)

  it("reopens the logs after they were moved away, on SIGUSR1 and on moonring -s reopen", function()
    local port = helpers.free_port()
    local dir = helpers.tmpname("rotate", "")
    helpers.run("mkdir -p " .. dir)
    local alog, elog, pid = dir .. "/access.log", dir .. "/error.log", dir .. "/mr.pid"
    local mr = helpers.start_moonring(([[
return { workers = 2, listen = { "127.0.0.1:%d" }, access_log = %q, error_log = %q, pid = %q,
  upstreams = { o = { servers = { "127.0.0.1:%d" } } }, routes = { { path = "/", upstream = "o" } } }
]]):format(port, alog, elog, pid, origin.port))
    local function hit(n)
      for _ = 1, n do assert.equal(200, helpers.http("GET", ("http://127.0.0.1:%d/size/1"):format(port)).status) end
    end
    hit(2)
    assert(wait_lines(alog, 2))
    assert.equal(0, select(2, helpers.run(("mv %s %s.1 && mv %s %s.1"):format(alog, alog, elog, elog))))
    hit(1) -- still into the moved file
    assert(wait_lines(alog .. ".1", 3))
    mr.signal("USR1")
    assert.truthy(helpers.eventually(function() return helpers.read_file(elog) end, 5))
    hit(2)
    assert.equal(2, #assert(wait_lines(alog, 2)))
    assert.equal(3, #lines(alog .. ".1"))
    assert.matches("log files reopened", helpers.read_file(elog))
    -- once more through -s reopen
    assert.equal(0, select(2, helpers.run(("mv %s %s.2"):format(alog, alog))))
    local out, rc = helpers.run(("%s -s reopen -c %s 2>&1"):format(helpers.moonring_bin, mr.conf_path))
    assert.equal(0, rc, out)
    assert.truthy(helpers.eventually(function() return helpers.read_file(alog) end, 5))
    hit(1)
    assert.equal(1, #assert(wait_lines(alog, 1)))
    assert.equal(0, mr.stop())
  end)

  it("takes the client address from trusted proxies only (real_ip), for logs and req.remote_addr", function()
    local port = helpers.free_port()
    local log = helpers.tmpname("realip", ".log")
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, access_log = %q,
  log_formats = { ip = "$remote_addr $connection_addr $status" }, access_log_format = "ip",
  real_ip = { from = { "127.0.0.0/8", "10.0.0.0/8" } },
  routes = { { path = "/", handler = function(req) return 200, req.remote_addr end } } }
]]):format(port, log))
    local function ask(xff)
      return helpers.http("GET", ("http://127.0.0.1:%d/"):format(port), { headers = { ["X-Forwarded-For"] = xff } }).body
    end
    assert.equal("203.0.113.7", ask("203.0.113.7"))
    assert.equal("198.51.100.1", ask("203.0.113.7, 198.51.100.1, 10.1.2.3")) -- trusted hops skipped
    assert.equal("2001:db8::1", ask("2001:db8::1"))
    assert.equal("127.0.0.1", ask("not-an-address"))
    assert.equal("127.0.0.1", helpers.http("GET", ("http://127.0.0.1:%d/"):format(port)).body)
    local t = assert(wait_lines(log, 5))
    assert.equal("203.0.113.7 127.0.0.1 200", t[1])
    assert.equal(0, mr.stop())
    -- an untrusted peer's header is ignored
    local port2 = helpers.free_port()
    helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, real_ip = { from = { "10.0.0.0/8" } },
  routes = { { path = "/", handler = function(req) return 200, req.remote_addr end } } }
]]):format(port2))
    assert.equal("127.0.0.1", helpers.http("GET", ("http://127.0.0.1:%d/"):format(port2),
      { headers = { ["X-Forwarded-For"] = "203.0.113.7" } }).body)
  end)
end)
