-- reload.drain_timeout: requests still holding a retired generation after the deadline are
-- closed and its VM freed (with a log line); WebSocket tunnels hold no VM and are not cut; the
-- key is validated.
local helpers = require "helpers"
local socket = require "socket"

local write = helpers.write_file

describe("reload drain deadline", function()
  local origin, port, admin, mr

  local function config(version, drain)
    return ([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  admin = { listen = "127.0.0.1:%d" },
  reload = { drain_timeout = %q },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/version", handler = function(req) return 200, %q end },
    { path = "/", upstream = "origin" },
  },
}
]]):format(port, admin, drain or "600ms", origin.port, version)
  end

  local function reload()
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    return res.status, res.body
  end

  setup(function()
    origin = helpers.start_origin()
    port, admin = helpers.free_port(), helpers.free_port()
    mr = helpers.start_moonring(config("v1"), { wait_port = port })
    assert.truthy(helpers.eventually(function()
      return helpers.http("GET", ("http://127.0.0.1:%d/-/status"):format(admin))
    end, 5))
  end)

  teardown(function() helpers.stop_all() end)

  it("closes a request still on the old generation after the deadline, but not a tunnel", function()
    -- A tunnel opened on the old generation.
    local ws = assert(helpers.connect(port))
    ws:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert.matches("^HTTP/1%.1 101 ", helpers.read(ws, { pattern = "\r\n\r\n", timeout = 3 }))
    -- A slow origin request (4 s) started on the old generation.
    local t0 = socket.gettime()
    local slow = helpers.spawn(("curl -sS -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/slow/4000"):format(port))
    helpers.sleep(0.3)
    write(mr.conf_path, config("v2"))
    assert.equal(200, (reload()))
    local rc = slow.wait(10)
    local took = socket.gettime() - t0
    assert.is_not.equal(0, rc, slow.log()) -- cut: curl reports an empty reply
    assert.is_true(took < 3, ("the slow request lasted %.1f s; the deadline was 0.6 s"):format(took))
    assert.truthy(helpers.eventually(function()
      return mr.log():find("still in use after reload.drain_timeout", 1, true) ~= nil
    end, 3), mr.log())
    assert.truthy(mr.log():find("closed 1 requests (WebSocket/upgrade tunnels kept), VM freed", 1, true), mr.log())
    -- The tunnel still relays both ways, long after the deadline.
    helpers.sleep(0.3)
    local frame = "\129\5hello"
    ws:send(frame)
    assert.equal(frame, helpers.read(ws, { until_bytes = #frame, timeout = 3 }))
    ws:close()
    assert.equal("v2", assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(port))).body)
  end)

  it("lets a request that ends before the deadline finish", function()
    write(mr.conf_path, config("v3", "5s"))
    assert.equal(200, (reload()))
    local slow = helpers.spawn(("curl -sS http://127.0.0.1:%d/slow/1000"):format(port))
    helpers.sleep(0.3)
    write(mr.conf_path, config("v4", "5s"))
    assert.equal(200, (reload()))
    assert.equal(0, slow.wait(10))
    assert.equal("slow\n", slow.log())
  end)

  it("keeps the old VM past the deadline while a timer of it still runs", function()
    -- A timer that is mid-sleep when its generation is retired runs on in that VM: the drain
    -- deadline must not free the VM under it.
    local timer_conf = config("t1"):gsub("routes = {", [[init_worker = function()
    local moonring = require "moonring"
    moonring.timer.at(0, function(premature)
      if premature then return end
      moonring.sleep(1.5)
      moonring.log("info", "old timer woke up")
    end)
  end,
  routes = {]], 1)
    write(mr.conf_path, timer_conf)
    assert.equal(200, (reload()))
    helpers.sleep(0.2)
    write(mr.conf_path, config("t2", "300ms"))
    assert.equal(200, (reload()))
    assert.truthy(helpers.eventually(function()
      return mr.log():find("VM kept for its running timers", 1, true) ~= nil
    end, 3), mr.log())
    assert.truthy(helpers.eventually(function()
      return mr.log():find("old timer woke up", 1, true) ~= nil
    end, 5), mr.log())
    assert.is_true(mr.alive())
    assert.equal("t2", assert(helpers.http("GET", ("http://127.0.0.1:%d/version"):format(port))).body)
  end)

  it("validates reload.drain_timeout", function()
    local ok, out = helpers.moonring_check(config("x", "soon"))
    assert.is_false(ok)
    assert.matches("reload.drain_timeout", out)
    ok, out = helpers.moonring_check(config("x"):gsub("drain_timeout", "drain_timout"))
    assert.is_false(ok)
    assert.matches(":5: reload: unknown key 'drain_timout' (did you mean 'drain_timeout'?)", out, 1, true)
  end)
end)
