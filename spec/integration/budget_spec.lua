-- lua.time_budget: a phase that runs too long without yielding gets a Lua error (500, traceback
-- in the log) and the worker keeps serving. Covers the two ways moonring can stop a loop: the
-- watchdog's count hook (interpreted code) and the check at every request-API call (also in
-- JIT-compiled loops). A compiled loop that does neither cannot be stopped; see docs/config.md.
local helpers = require "helpers"
local socket = require "socket"

local BUDGET = 0.3
-- generous: two cores shared with other test runs; the point is "about the budget", not "forever"
local MARGIN = 3

describe("lua.time_budget", function()
  local mr, base

  setup(function()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    mr = helpers.start_moonring(([[
local moonring = require "moonring"

local function spin_interpreted(req)
  while true do local t = {} end
end
jit.off(spin_interpreted) -- interpreted: the watchdog's count hook stops it

local function spin_api(req)
  local n = 0
  while true do -- compiles; hooks never run in compiled code, the API check stops it
    if req:header("x-none") then n = n + 1 end
  end
end

local function spin_caught(req)
  -- catching the budget error does not buy more time: every later check fails again
  while true do pcall(function() for i = 1, 1e6 do local t = {} end end) end
end
jit.off(spin_caught, true)

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  lua = { time_budget = "%dms" },
  routes = {
    { exact = "/spin", handler = spin_interpreted },
    { exact = "/spin-api", handler = spin_api },
    { exact = "/spin-caught", handler = spin_caught },
    { exact = "/route-spin", match = function(req)
        if req.path ~= "/route-spin" then return false end
        local f = function() while true do local t = {} end end
        jit.off(f)
        f()
      end, handler = function() return 200, "unreachable\n" end },
    { exact = "/sleepy", handler = function(req)
        -- three parks of 0.2 s: 0.6 s in total, but each run is short, and parked time is not run time
        for i = 1, 3 do moonring.sleep(0.2) end
        return 200, "rested\n"
      end },
    { path = "/", handler = function(req) return 200, "ok\n" end },
  },
}
]]):format(port, BUDGET * 1000), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function timed(path)
    local t0 = socket.gettime()
    local res, err = helpers.http("GET", base .. path, { timeout = BUDGET + MARGIN + 2 })
    return res, err, socket.gettime() - t0
  end

  local function expect_stopped(path)
    local res, err, took = timed(path)
    assert.is_truthy(res, err)
    assert.equal(500, res.status, res.body)
    assert.is_true(took >= BUDGET * 0.9, ("answered after %.3f s, before the budget ran out"):format(took))
    assert.is_true(took < BUDGET + MARGIN, ("answered after %.3f s"):format(took))
    -- the worker lives on
    local ok = assert(helpers.http("GET", base .. "/ok"))
    assert.equal(200, ok.status)
    assert.equal("ok\n", ok.body)
  end

  it("stops an interpreted infinite loop with a 500 and a traceback, and keeps serving", function()
    expect_stopped("/spin")
    local log = mr.log()
    assert.is_truthy(log:find("time budget exceeded", 1, true), log)
    assert.is_truthy(log:find("stack traceback", 1, true), log)
    assert.is_truthy(log:find("spin_interpreted", 1, true) or log:find("budget_spec", 1, true)
      or log:find(".lua:", 1, true), log)
  end)

  it("stops a JIT-compiled loop that calls the request API", function()
    expect_stopped("/spin-api")
  end)

  it("keeps stopping a loop that catches the error with pcall", function()
    expect_stopped("/spin-caught")
  end)

  it("stops a runaway match function during routing", function()
    expect_stopped("/route-spin")
  end)

  it("does not count time parked in moonring.sleep", function()
    local res, err, took = timed("/sleepy")
    assert.is_truthy(res, err)
    assert.equal(200, res.status, res.body)
    assert.equal("rested\n", res.body)
    assert.is_true(took >= 0.6, ("took %.3f s"):format(took))
  end)

  it("serves many requests after the runaway ones", function()
    for _ = 1, 50 do
      local res = assert(helpers.http("GET", base .. "/ok"))
      assert.equal(200, res.status)
    end
  end)

  it("is validated: a bad time_budget refuses the config naming the key", function()
    local ok, out = helpers.moonring_check([[
return { listen = { "127.0.0.1:1" }, routes = { { handler = function() end } },
  lua = { time_budget = "soon" } }
]])
    assert.is_false(ok)
    assert.is_truthy(out:find("lua.time_budget", 1, true), out)
  end)
end)
