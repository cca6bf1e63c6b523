-- Hot reload: new generations per request without dropping anything, refusal of broken configs,
-- in-flight requests finishing on their own generation, listeners kept (same socket), shared
-- dicts kept, listeners added and removed, and resources stable over many reloads.
local helpers = require "helpers"
local socket = require "socket"

local write = helpers.write_file

local read = helpers.read_file

local listen_inodes = helpers.listen_inodes

local fd_count = helpers.fd_count

describe("hot reload", function()
  local origin, port, admin, extra, conf_path, mr

  local function config(version, opts)
    opts = opts or {}
    return ([[
return {
  workers = 2,
  listen = { "127.0.0.1:%d"%s },
  admin = { listen = "127.0.0.1:%d" },
  shared = { state = "1m" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/version", handler = function(req) return 200, %q end },
    { path = "/slowversion", handler = function(req)
        require("moonring").sleep(1)
        return 200, %q
      end },
    { path = "/incr", handler = function(req)
        return 200, tostring(require("moonring").shared.state:incr("n", 1, 0))
      end },
    { path = "/", upstream = "origin" },
  },
  %s
}
]]):format(port, opts.extra and (", \"127.0.0.1:" .. extra .. "\"") or "", admin, origin.port,
      version, version, opts.broken and "broken = syntax error here" or "")
  end

  local function reload()
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    return res.status, res.body
  end

  local function version()
    local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(port)))
    return res.body
  end

  setup(function()
    origin = helpers.start_origin()
    port, admin, extra = helpers.free_port(), helpers.free_port(), helpers.free_port()
    mr = helpers.start_moonring(config("v1"), { wait_port = port })
    conf_path = mr.conf_path
    assert.truthy(helpers.eventually(function()
      return helpers.http("GET", ("http://127.0.0.1:%d/-/status"):format(admin))
    end, 5))
  end)

  teardown(function() helpers.stop_all() end)

  it("switches every new request, keep-alive ones included, and answers with the generation", function()
    local s = assert(helpers.connect(port))
    local r = assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(port), { sock = s }))
    assert.equal("v1", r.body)
    write(conf_path, config("v2"))
    local status, body = reload()
    assert.equal(200, status, body)
    assert.matches('^{"generation":%d+}', body)
    r = assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(port), { sock = s }))
    assert.equal("v2", r.body) -- the next request on the same connection
    s:close()
  end)

  it("refuses a broken config, reports why, and keeps serving the old one", function()
    write(conf_path, config("v3", { broken = true }))
    local status, body = reload()
    assert.equal(500, status)
    assert.matches(conf_path:match("[^/]+$"), body, 1, true)
    assert.equal("v2", version())
    assert.truthy(mr.log():find("reload refused", 1, true))
    write(conf_path, config("v2"))
  end)

  it("lets in-flight requests finish on the generation they started on", function()
    local slow = helpers.spawn(("curl -sS http://127.0.0.1:%d/slowversion"):format(port))
    local slow_up = helpers.spawn(("curl -sS http://127.0.0.1:%d/slow/1500"):format(port))
    helpers.sleep(0.3)
    write(conf_path, config("v4"))
    assert.equal(200, (reload()))
    assert.equal("v4", version())
    assert.equal(0, slow.wait(5))
    assert.equal(0, slow_up.wait(5))
    assert.equal("v2", slow.log())
    assert.equal("slow\n", slow_up.log())
  end)

  it("keeps listening sockets and shared dict contents; opens and closes listeners", function()
    local before = listen_inodes(port)
    assert.is_true(#before > 0)
    local n1 = tonumber(assert(helpers.http("GET", ("http://127.0.0.1:%d/incr"):format(port))).body)
    write(conf_path, config("v5", { extra = true }))
    assert.equal(200, (reload()))
    assert.equal(before, listen_inodes(port))
    local n2 = tonumber(assert(helpers.http("GET", ("http://127.0.0.1:%d/incr"):format(port))).body)
    assert.equal(n1 + 1, n2)
    assert.equal("v5", assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(extra))).body)
    write(conf_path, config("v6"))
    assert.equal(200, (reload()))
    assert.truthy(helpers.eventually(function() return not helpers.connect(extra) end, 3))
    assert.equal(before, listen_inodes(port))
  end)

  it("reloads on SIGHUP and on moonring -s reload", function()
    write(conf_path, config("v7"))
    mr.signal("HUP")
    assert.truthy(helpers.eventually(function() return version() == "v7" end, 5))
    write(conf_path, config("v8"))
    local out, rc = helpers.run(("%s -s reload -c %s 2>&1"):format(helpers.moonring_bin, conf_path))
    assert.equal(0, rc, out)
    assert.matches('"generation"', out)
    assert.equal("v8", version())
    write(conf_path, config("v9", { broken = true }))
    out, rc = helpers.run(("%s -s reload -c %s 2>&1"):format(helpers.moonring_bin, conf_path))
    assert.is_not.equal(0, rc)
    write(conf_path, config("v8"))
  end)

  it("survives 100 reloads under load with zero failed requests", function()
    local wrk = helpers.spawn(("wrk -t1 -c8 -d6s --timeout 5s http://127.0.0.1:%d/version"):format(port))
    helpers.sleep(0.3)
    for i = 1, 100 do
      local v = (i % 2 == 0) and "even" or "odd"
      write(conf_path, config(v))
      local status, body = reload()
      assert.equal(200, status, body)
      assert.equal(v, version())
    end
    assert.equal(0, wrk.wait(15))
    local w = helpers.parse_wrk(wrk.log())
    assert.is_true(w.requests > 100, wrk.log())
    for k, v in pairs(w.errors) do assert.equal(0, v, k .. " errors: " .. wrk.log()) end
  end)

  it("coalesces a storm of concurrent reload requests into a few reloads", function()
    write(conf_path, config("storm"))
    local log0 = #mr.log()
    local urls = {}
    for i = 1, 30 do urls[i] = ("http://127.0.0.1:%d/-/reload"):format(admin) end
    local out, rc = helpers.run("curl -s --parallel --parallel-immediate --parallel-max 30 -X POST -w '\n' "
      .. table.concat(urls, " "))
    assert.equal(0, rc, out)
    local answers, gens = 0, {}
    for g in out:gmatch('{"generation":(%d+)}') do answers = answers + 1; gens[g] = true end
    assert.equal(30, answers, out)
    local _, reloads = mr.log():sub(log0):gsub("serving in every worker", "")
    local distinct = 0
    for _ in pairs(gens) do distinct = distinct + 1 end
    -- Every answer names a generation that a reload really built; requests that waited for a
    -- running reload share the next one instead of queueing one each.
    assert.equal(reloads, distinct, mr.log():sub(log0))
    assert.is_true(reloads < 30, ("%d reloads for 30 requests"):format(reloads))
    assert.equal("storm", version())
  end)

  it("switches every worker or none when one worker fails to build the generation", function()
    assert.equal("storm", version())
    -- Fails in exactly one evaluation: the third since arming (validation is the first, then one
    -- per worker, in parallel). O_APPEND makes each writer's offset a unique counter.
    local arm = helpers.tmpname("arm", "")
    local trap = ([[
do
  local armed = io.open(%q, "r")
  if armed then
    armed:close()
    local f = io.open(%q, "a"); f:write("x"); f:flush()
    local n = f:seek(); f:close()
    if n == 3 then error("boom in one worker") end
  end
end
]]):format(arm, arm)
    write(conf_path, trap .. config("split"))
    write(arm, "")
    local status, body = reload()
    os.remove(arm)
    assert.equal(500, status, body)
    assert.matches("boom in one worker", body, 1, true)
    assert.truthy(mr.log():find("none switched", 1, true), mr.log())
    for _ = 1, 20 do assert.equal("storm", version()) end
    assert.equal(200, (reload())) -- disarmed: the same config now loads everywhere
    for _ = 1, 20 do assert.equal("split", version()) end
  end)

  it("keeps RSS and fd count flat over 300 reloads", function()
    write(conf_path, config("flat"))
    for _ = 1, 20 do reload() end
    local rss0, fds0 = mr.rss_kb(), fd_count(mr.pid)
    for _ = 1, 300 do assert.equal(200, (reload())) end
    helpers.sleep(0.2)
    local rss1, fds1 = mr.rss_kb(), fd_count(mr.pid)
    -- no descriptor leaks (one may have closed meanwhile: an idle keep-alive connection timing out)
    assert.is_true(fds1 <= fds0, ("fds grew from %d to %d"):format(fds0, fds1))
    local limit = os.getenv("ASAN_OPTIONS") and 200 * 1024 or 16 * 1024
    assert.is_true(rss1 - rss0 < limit, ("RSS grew from %d to %d KiB"):format(rss0, rss1))
  end)
end)
