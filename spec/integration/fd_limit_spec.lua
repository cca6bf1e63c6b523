-- Running out of file descriptors must not turn the accept loop into a busy spin: moonring
-- leaves new connections in the backlog, retries a little later, and serves again once
-- descriptors are free.
local helpers = require "helpers"
local socket = require "socket"

local function cpu_seconds(pid)
  local stat = helpers.read_file("/proc/" .. pid .. "/stat")
  local rest = stat:match("%) (.*)$")
  local fields = {}
  for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
  -- utime and stime are fields 14 and 15 of the whole line; `rest` starts at field 3.
  return (tonumber(fields[12]) + tonumber(fields[13])) / tonumber((helpers.run("getconf CLK_TCK")))
end

describe("descriptor exhaustion", function()
  it("pauses accepting without spinning, then serves again once descriptors are free", function()
    local port = helpers.free_port()
    local conf = helpers.tmpname("fdlimit", ".lua")
    helpers.write_file(conf, ([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  routes = { { path = "/", handler = function(req) return req:respond(200, "ok\n") end } },
}
]]):format(port))
    local h = helpers.spawn("ulimit -n 64; exec " .. helpers.shell_quote(helpers.moonring_bin) .. " -c "
      .. helpers.shell_quote(conf))
    assert(helpers.eventually(function() return helpers.port_open(port) end, 10), h.log())

    local conns = {}
    for i = 1, 90 do conns[i] = assert(helpers.connect(port)) end
    assert(helpers.eventually(function() return h.log():find("Too many open files", 1, true) end, 5),
      "moonring never ran out of descriptors:\n" .. h.log())

    local c0 = cpu_seconds(h.pid)
    socket.sleep(2)
    local used = cpu_seconds(h.pid) - c0
    assert.is_true(used < 0.5, ("moonring used %.2f s of CPU in 2 s while out of descriptors"):format(used))
    local _, warnings = h.log():gsub("Too many open files", "")
    assert.is_true(warnings < 20, warnings .. " EMFILE warnings: accept retried without pause")

    for i = 1, 60 do conns[i]:close() end
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/", { timeout = 5 }))
    assert.equal(200, res.status)
    for i = 61, 90 do conns[i]:close() end
    assert.is_true(h.alive())
  end)

  teardown(function() helpers.stop_all() end)
end)
