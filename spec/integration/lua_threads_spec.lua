-- Coroutines a script creates itself may wait (sockets, sleep, the HTTP client), and light
-- threads (moonring.thread) run several waits of one request at once, on the real binary.
local helpers = require "helpers"
local socket = require "socket"

describe("lua coroutines and light threads", function()
  local origin, mr, base

  setup(function()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    mr = helpers.start_moonring(([[
local moonring = require "moonring"
local OP = %d
local function get(path)
  local res, err = moonring.http.request{ url = "http://127.0.0.1:" .. OP .. path, timeout = 5 }
  if not res then return "ERR " .. err end
  return res.status .. " " .. res.body:gsub("\n", "")
end

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  shared = { t = "1m" },
  init_worker = function()
    -- a timer with threads of its own
    moonring.timer.at(0, function()
      local a = moonring.thread.spawn(function() moonring.sleep(0.05); return "a" end)
      local b = moonring.thread.spawn(function() return get("/size/3") end)
      local _, ra = moonring.thread.wait(a)
      local _, rb = moonring.thread.wait(b)
      moonring.shared.t:set("timer", ra .. "," .. rb)
    end)
  end,
  routes = {
    -- a coroutine of the script's own waits on the HTTP client and sleep, yields values between
    { path = "/own", handler = function(req)
        local co = coroutine.create(function(x)
          local r1 = get("/size/5")
          local y = coroutine.yield(x .. ":" .. r1)
          moonring.sleep(0.01)
          return y .. ":" .. get("/size/2")
        end)
        local ok1, v1 = coroutine.resume(co, "first")
        local ok2, v2 = coroutine.resume(co, "second")
        return 200, table.concat({ tostring(ok1), v1, tostring(ok2), v2, coroutine.status(co) }, "|")
      end },
    -- a body reader written as coroutine.wrap, the way lua-resty-http hands out bodies
    { path = "/wrap", handler = function(req)
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", OP))
        assert(s:send("GET /size/100 HTTP/1.1\r\nHost: x\r\n\r\n"))
        repeat local l = assert(s:receive()) until l == ""
        local reader = coroutine.wrap(function()
          for _ = 1, 4 do coroutine.yield(assert(s:receive(25))) end
        end)
        local parts = {}
        for i = 1, 4 do parts[i] = reader() end
        s:close()
        return 200, table.concat(parts, ",")
      end },
    -- nested: a coroutine inside a coroutine sleeps
    { path = "/nested", handler = function(req)
        local outer = coroutine.wrap(function()
          local inner = coroutine.wrap(function() moonring.sleep(0.01); return "inner" end)
          return inner() .. "+outer"
        end)
        return 200, outer()
      end },
    -- two upstream calls in parallel: the phase takes as long as the slower one
    { path = "/fanout", handler = function(req)
        local t0 = moonring.monotonic()
        local a = moonring.thread.spawn(get, "/slow/300")
        local b = moonring.thread.spawn(get, "/slow/300")
        local c = moonring.thread.spawn(function() moonring.sleep(0.3); return "slept" end)
        local oka, ra = moonring.thread.wait(a)
        local okb, rb = moonring.thread.wait(b)
        local okc, rc = moonring.thread.wait(c)
        local dt = moonring.monotonic() - t0
        return 200, table.concat({ tostring(oka), ra, tostring(okb), rb, tostring(okc), rc,
          dt < 0.55 and "parallel" or ("serial " .. dt) }, "|")
      end },
    -- wait returns the first to end; kill; errors; waiting twice
    { path = "/first", handler = function(req)
        local slow = moonring.thread.spawn(function() moonring.sleep(5); return "slow" end)
        local fast = moonring.thread.spawn(function() moonring.sleep(0.02); return "fast", 2 end)
        local ok, v, n = moonring.thread.wait(slow, fast)
        local killed = moonring.thread.kill(slow)
        local again, err = moonring.thread.wait(fast)
        local bad = moonring.thread.spawn(function() moonring.sleep(0); error("boom", 0) end)
        local okb, errb = moonring.thread.wait(bad)
        local k2, kerr = moonring.thread.kill(bad)
        return 200, table.concat({ tostring(ok), v, n, tostring(killed), tostring(again), err,
          tostring(okb), errb, tostring(k2), kerr }, "|")
      end },
    -- a thread that never waits ends inside spawn; threads not waited for still finish before
    -- the phase does (the on_request sets a header the upstream echoes)
    { path = "/drain", upstream = "127.0.0.1:" .. OP, strip_prefix = true, filters = {
        { on_request = function(req, ctx)
            local t = moonring.thread.spawn(function() return 1 end)
            moonring.thread.spawn(function()
              moonring.sleep(0.05)
              req:set_header("x-late", "set by a thread")
            end)
          end },
      } },
    -- coroutine.yield at the top of a phase gives a turn to the threads
    { path = "/yield", handler = function(req)
        local log = {}
        moonring.thread.spawn(function()
          for i = 1, 3 do log[#log + 1] = "t" .. i; coroutine.yield() end
        end)
        for i = 1, 3 do log[#log + 1] = "m" .. i; coroutine.yield() end
        return 200, table.concat(log, ",")
      end },
    -- the request body read while a thread sleeps (its wake-ups reach the body reader too)
    { path = "/body", handler = function(req)
        local t = moonring.thread.spawn(function()
          for i = 1, 20 do moonring.sleep(0.005) end
          return "slept"
        end)
        local b = assert(req:body())
        local _, r = moonring.thread.wait(t)
        return 200, #b .. " " .. r
      end },
    -- a coroutine parked on I/O cannot be resumed by someone else meanwhile
    { path = "/parked", handler = function(req)
        local co = coroutine.create(function() moonring.sleep(0.05); return "done" end)
        local result
        local t = moonring.thread.spawn(function() result = { coroutine.resume(co) } end)
        local ok, err = coroutine.resume(co)
        moonring.thread.wait(t)
        return 200, tostring(ok) .. " " .. tostring(err) .. " " .. tostring(result[2])
      end },
    { path = "/timer", handler = function(req) return 200, tostring(moonring.shared.t:get("timer")) end },
  },
}
]]):format(origin.port, port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function get(path)
    local res = assert(helpers.http("GET", base .. path))
    assert.equal(200, res.status, res.body)
    return res.body
  end

  it("lets a coroutine of the script's own wait on the HTTP client and sleep", function()
    assert.equal("true|first:200 abcde|true|second:200 ab|dead", get("/own"))
  end)

  it("reads a body through a coroutine.wrap iterator", function()
    local p = helpers.pattern(100)
    assert.equal(p:sub(1, 25) .. "," .. p:sub(26, 50) .. "," .. p:sub(51, 75) .. "," .. p:sub(76, 100), get("/wrap"))
  end)

  it("nests coroutines that wait", function()
    assert.equal("inner+outer", get("/nested"))
  end)

  it("runs light threads in parallel", function()
    assert.equal("true|200 slow|true|200 slow|true|slept|parallel", get("/fanout"))
  end)

  it("waits for the first of several threads, kills, reports errors", function()
    assert.equal("true|fast|2|true|nil|already waited or killed|false|boom|nil|already waited or killed", get("/first"))
    assert.matches("lua light thread aborted: boom", mr.log(), 1, true)
  end)

  it("ends a phase only when its threads ended", function()
    local body = get("/drain/head")
    assert.matches("x-late: set by a thread", body:lower(), 1, true)
  end)

  it("turns coroutine.yield at the top into a turn for the others", function()
    assert.equal("t1,m1,t2,m2,t3,m3", get("/yield"))
  end)

  it("reads the request body while a thread sleeps", function()
    local c = assert(helpers.connect(tonumber(base:match(":(%d+)$"))))
    c:send("POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
    socket.sleep(0.05)
    c:send("56789")
    local data = helpers.read(c, { pattern = "slept" })
    c:close()
    assert.matches("10 slept", data, 1, true)
  end)

  it("refuses to resume a coroutine that waits for I/O", function()
    assert.equal("false cannot resume a coroutine that is waiting for I/O done", get("/parked"))
  end)

  it("runs threads in timers", function()
    helpers.eventually(function() return get("/timer") ~= "nil" end)
    assert.equal("a,200 abc", get("/timer"))
  end)
end)
