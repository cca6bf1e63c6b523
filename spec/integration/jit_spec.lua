-- The hot request API must JIT-compile: it is reached through LuaJIT FFI (no lua_CFunction),
-- so a loop over header reads/writes and path/method access records traces without aborts.
local helpers = require "helpers"

local PROBE = [==[
local function probe(req, body)
  local aborts, stops = {}, 0
  local function on_trace(what, tr, func, pc, otr, oex)
    -- keep the callback trivial: an error in it would silently detach it
    if what == "abort" then aborts[#aborts + 1] = { otr, oex, func, pc }
    elseif what == "stop" then stops = stops + 1 end
  end
  -- One call first, interpreted, resolves the FFI symbols the body uses: recording a first
  -- lookup aborts ("symbol not in cache"), which happens when a hot-counter collision makes a
  -- function hot on its very first call.
  body(req, 0)
  jit.flush()
  jit.attach(on_trace, "trace")
  local n = 0
  for i = 1, 3000 do
    body(req, i)
    n = n + 1
  end
  jit.attach(on_trace)
  local text = {}
  for _, a in ipairs(aborts) do
    local fmt = require("jit.vmdef").traceerr[a[1]] or tostring(a[1])
    local ok, msg = pcall(string.format, fmt, a[2])
    msg = ok and msg or fmt
    -- A trace that ends because the probe loop itself ends, or that met the probe's own
    -- trace-event hook, is not the API failing to compile. Nor is one that started at a hot
    -- API function's entry (hot counters are hashed by bytecode address, so which of the
    -- function and the probe loop turns hot first varies from run to run) and then ran into
    -- the probe's loop: LuaJIT gives up on it and traces the loop instead, as it should.
    if not msg:find("leaving loop in root trace", 1, true)
      and not msg:find("hook called during recording", 1, true)
      and not msg:find("loop unroll limit reached", 1, true)
      and not msg:find("inner loop in root trace", 1, true) then
      local info = require("jit.util").funcinfo(a[3], a[4])
      text[#text + 1] = msg .. " at " .. tostring(info.loc)
    end
  end
  return n, stops, text
end

]==]

describe("hot Lua API", function()
  local mr, base

  setup(function()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    mr = helpers.start_moonring(([=[
@PROBE@
local respond_result

local function report(req, n, stops, aborts)
  return req:respond(200, ("%%d %%d %%d %%s"):format(n, stops, #aborts, table.concat(aborts, "; ")))
end

return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  routes = {
    { path = "/read", handler = function(req)
        return report(req, probe(req, function(r, i)
          local v = r:header("x-probe")
          local m = r.method
          local p = r.path
          if not v or #m + #p == 0 then error("no header") end
        end))
      end },
    { path = "/lines", handler = function(req)
        local t = {}
        for i = 1, 4000 do t[i] = "line " .. i .. "\r\n" end
        return 200, table.concat(t)
      end },
    -- cosocket reads from its buffer (the reads that wait yield, which ends a trace by design)
    { path = "/tcpread", handler = function(req)
        local s = require("moonring").tcp()
        assert(s:connect("127.0.0.1", %d))
        assert(s:send("GET /lines HTTP/1.1\r\nHost: x\r\n\r\n"))
        repeat local l = assert(s:receive()) until l == ""
        local reader = s:receiveuntil("\r\n")
        return report(req, probe(req, function(r, i)
          local l = i %% 2 == 0 and s:receive() or reader()
          if not l or l:sub(1, 5) ~= "line " then error("bad line " .. tostring(l)) end
        end))
      end },
    -- respond can answer only once per request: the probe's later calls take the "already sent"
    -- path through the same code; the figures are fetched by the next request
    { path = "/respond-result", handler = function(req) return report(req, unpack(respond_result)) end },
    { path = "/respond", handler = function(req)
        local hdrs = { ["content-type"] = "text/plain", ["x-n"] = "1" }
        respond_result = { probe(req, function(r, i) r:respond(200, "x", hdrs) end) }
      end },
    { path = "/write", handler = function(req)
        return report(req, probe(req, function(r, i)
          r:set_header("x-set", "v")
          r:del_header("x-gone")
        end))
      end },
  },
}
]=]):gsub("@PROBE@", function() return (PROBE:gsub("%%", "%%%%")) end):format(port, port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function check(path)
    local res = assert(helpers.http("GET", base .. path, { headers = { ["X-Probe"] = "hello" } }))
    assert.equal(200, res.status, res.body)
    local n, stops, naborts, detail = res.body:match("^(%d+) (%d+) (%d+) ?(.*)$")
    assert.equal("3000", n)
    assert.is_true(tonumber(stops) >= 1, "no trace was recorded: " .. res.body)
    assert.equal("0", naborts, "trace aborts: " .. detail)
  end

  it("compiles header reads, method and path", function() check("/read") end)
  it("compiles header writes and deletes", function() check("/write") end)
  it("compiles cosocket receive and receiveuntil on buffered data", function() check("/tcpread") end)
  it("compiles respond with headers", function()
    local res = assert(helpers.http("GET", base .. "/respond"))
    assert.equal(200, res.status)
    assert.equal("x", res.body)
    check("/respond-result")
  end)
end)

-- The OpenResty layer's hot calls go to the same FFI API: the access-phase script of bench/run's
-- nginx-lua variant, written against ngx, compiles as well.
describe("hot ngx API (lua.ngx)", function()
  local base

  setup(function()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    helpers.start_moonring(([=[
@PROBE@
local report_text
local function report(n, stops, aborts)
  return ("%%d %%d %%d %%s"):format(n, stops, #aborts, table.concat(aborts, "; "))
end
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  lua = { ngx = true },
  routes = {
    { path = "/access", upstream = "127.0.0.1:1", filters = { { on_request = function(req)
        local text = report(probe(req, function(r, i)
          local v = ngx.req.get_headers()["x-bench"]
          if ngx.var.uri:sub(1, 5) == "/api/" then ngx.var.bench_upstream = "origin" end
          ngx.req.set_header("x-chain", "1")
          if not v then error("no header") end
        end))
        ngx.say(text)
        ngx.exit(200)
      end } } },
    { path = "/header", upstream = "127.0.0.1:1", filters = { {
        on_request = function() ngx.exit(200) end,
        on_response = function(res)
          local text = report(probe(res, function(r, i)
            ngx.header["x-served-by"] = "nginx-lua"
            local s = ngx.status
          end))
          ngx.header["x-report"] = text
        end } } },
  },
}
]=]):gsub("@PROBE@", function() return (PROBE:gsub("%%", "%%%%")) end):format(port), { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  -- ngx.var, ngx.header and ngx.status are metamethods (as in lua-resty-core). When the hot
  -- counter of one of them fires before the probe's loop does (counters are hashed by bytecode
  -- address, so it varies from run to run), LuaJIT starts a root trace at its entry and gives up
  -- where it returns into the metamethod's caller ("return to lower frame"); the loop's own
  -- trace, with the metamethods inlined, is what `stops` counts. Any other abort fails.
  local function check(text)
    local n, stops, naborts, detail = text:match("^(%d+) (%d+) (%d+) ?(.*)$")
    assert.equal("3000", n, text)
    assert.is_true(tonumber(stops) >= 1, "no trace was recorded: " .. text)
    local other = {}
    detail = detail:gsub("%s+$", "")
    for a in (detail .. "; "):gmatch("(.-); ") do
      if a ~= "" and not a:find("return to lower frame", 1, true) then other[#other + 1] = a end
    end
    assert.equal(0, #other, "trace aborts: " .. detail)
  end

  it("compiles an access-phase script (ngx.req.get_headers, ngx.var, ngx.req.set_header)", function()
    local res = assert(helpers.http("GET", base .. "/access/api/x", { headers = { ["X-Bench"] = "1" } }))
    assert.equal(200, res.status, res.body)
    check(res.body)
  end)

  it("compiles a header filter (ngx.header, ngx.status)", function()
    local res = assert(helpers.http("GET", base .. "/header"))
    assert.equal(200, res.status, res.body)
    check(res.headers["x-report"])
  end)
end)
