-- Upstreams named by host go through the worker's resolver (src/net/resolver.c, via
-- src/upstream/upstream.c): a configured server's name is resolved again in the background once
-- its address is older than resolver.ttl, and req:set_upstream("name:port") resolves a name on
-- first use without blocking the worker. getaddrinfo is answered by spec/fixtures/fake_dns.c
-- (preloaded), which logs each call for a .mr.test name.
local helpers = require "helpers"

local function read_file(p) return helpers.read_file(p) or "" end

local function calls(log, name)
  local n = 0
  for line in read_file(log):gmatch("[^\n]+") do
    if line == name then n = n + 1 end
  end
  return n
end

describe("upstreams named by host", function()
  local origin, mr, base, dns_log

  setup(function()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    dns_log = helpers.tmpname("fakedns", ".log")
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  resolver = { ttl = "300ms", negative_ttl = "200ms" },
  upstreams = { named = { servers = { "web.mr.test:%d" } } },
  routes = {
    { path = "/dyn", strip_prefix = true, upstream = "named", filters = { {
        on_request = function(req) assert(req:set_upstream(req:header("x-to"))) end } } },
    { path = "/", upstream = "named" },
  },
}
]]):format(port, origin.port), { wait_port = port, preload = helpers.fake_dns_lib,
      env = { MR_FAKEDNS_LOG = dns_log, MR_FAKEDNS_SLOW_MS = 500 } })
  end)

  teardown(function()
    helpers.stop_all()
    os.remove(dns_log)
  end)

  it("resolves a configured server's name again once its address is older than the TTL", function()
    local before = calls(dns_log, "web.mr.test") -- the load-time resolution on the main thread
    assert.is_true(before >= 1)
    local res = assert(helpers.http("GET", base .. "/size/2"))
    assert.equal(200, res.status)
    assert.truthy(helpers.eventually(function()
      assert.equal(200, assert(helpers.http("GET", base .. "/size/2")).status)
      return calls(dns_log, "web.mr.test") >= before + 2
    end, 5, 0.2), read_file(dns_log))
  end)

  it("resolves a name given to req:set_upstream on first use, and shares the lookup", function()
    local target = "slow1.mr.test:" .. origin.port
    -- three requests wait on one lookup (it takes 500 ms); the worker keeps serving meanwhile
    local results = {}
    local cmd = ("curl -sS -o /dev/null -w '%%{http_code}\\n' -H 'X-To: %s' %s/dyn/size/3 & "):rep(3) .. "wait"
    local t0 = os.clock()
    local out = helpers.run(cmd:format(target, base, target, base, target, base))
    for code in out:gmatch("%d+") do results[#results + 1] = code end
    assert.same({ "200", "200", "200" }, results)
    assert.equal(1, calls(dns_log, "slow1.mr.test"))
    assert.equal(200, assert(helpers.http("GET", base .. "/size/1")).status)
    assert.is_true(os.clock() - t0 < 5)
  end)

  it("answers 502 for a name that does not exist, with the reason in the log", function()
    local res = assert(helpers.http("GET", base .. "/dyn/size/1", { headers = { ["X-To"] = "nx9.mr.test:80" } }))
    assert.equal(502, res.status)
    assert.truthy(helpers.eventually(function()
      return mr.log():find("upstream nx9.mr.test:80: host not found", 1, true)
    end, 3), mr.log())
    assert.is_true(mr.alive())
  end)

  it("drops a pending lookup of a request whose client went away", function()
    local data = helpers.raw(tonumber(base:match(":(%d+)$")),
      "GET /dyn/size/1 HTTP/1.1\r\nHost: h\r\nX-To: slow2.mr.test:" .. origin.port .. "\r\n\r\n", { timeout = 0.1 })
    assert.equal("", data or "")
    helpers.sleep(0.8) -- the lookup answers after the client left
    assert.equal(200, assert(helpers.http("GET", base .. "/size/1")).status)
    assert.is_true(mr.alive())
  end)
end)
