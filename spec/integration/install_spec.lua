-- Installable: cmake --install into a temporary prefix, then the installed binary runs from
-- another directory and finds its Lua library under that prefix, not in the source tree.
local helpers = require "helpers"

describe("the installed layout", function()
  teardown(function() helpers.stop_all() end)

  it("installs the binary, the Lua library, the unit and the examples, and runs from elsewhere", function()
    local build = helpers.moonring_bin:match("^(.*)/[^/]*$")
    local prefix = helpers.tmpname("prefix", "")
    local out, rc = helpers.run(("cmake --install %s --prefix %s 2>&1"):format(helpers.shell_quote(build), prefix))
    assert.equal(0, rc, out)
    local bin = prefix .. "/bin/moonring"
    for _, f in ipairs({ bin, prefix .. "/share/moonring/lua/moonring/runtime.lua",
                         prefix .. "/share/moonring/lua/moonring/filters/cors.lua",
                         prefix .. "/lib/systemd/system/moonring.service",
                         prefix .. "/share/moonring/examples/moonring.lua",
                         prefix .. "/share/moonring/examples/logrotate-moonring" }) do
      assert.truthy(helpers.read_file(f), f .. " is missing")
    end
    local unit = helpers.read_file(prefix .. "/lib/systemd/system/moonring.service")
    assert.matches("Type=notify", unit)
    assert.matches("ExecReload=" .. prefix:gsub("%p", "%%%0") .. "/bin/moonring %-s reload", unit)
    assert.matches("LimitNOFILE=", unit)
    assert.matches("AmbientCapabilities=CAP_NET_BIND_SERVICE", unit)

    out, rc = helpers.run(("cd / && env -u MOONRING_LUA_DIR %s --help"):format(bin))
    assert.equal(0, rc)
    assert.matches("usage: moonring", out)
    -- The library it uses is the installed one, found relative to the binary.
    out, rc = helpers.run(("cd / && env -u MOONRING_LUA_DIR %s -v 2>&1"):format(bin))
    assert.equal(0, rc, out)
    assert.matches("\nlua: " .. prefix:gsub("%p", "%%%0") .. "/share/moonring/lua\n", out)

    -- And it serves, with a stock filter from that library, from another working directory.
    local port = helpers.free_port()
    local dir = helpers.tmpname("etc", "")
    helpers.run("mkdir -p " .. dir)
    helpers.write_file(dir .. "/moonring.lua", ([[
return { workers = 1, listen = { "127.0.0.1:%d" }, pid = "run.pid",
  routes = { { path = "/", handler = function() return 200, "installed\n" end,
               filters = { { "moonring.filters.headers", { response = { set = { ["x-from"] = "prefix" } } } } } } } }
]]):format(port))
    out, rc = helpers.run(("cd / && env -u MOONRING_LUA_DIR %s -t -c %s/moonring.lua 2>&1"):format(bin, dir))
    assert.equal(0, rc, out)
    local h = helpers.spawn(("cd / && exec env -u MOONRING_LUA_DIR %s -c %s/moonring.lua"):format(bin, dir),
      dir .. "/moonring.log")
    assert.truthy(helpers.eventually(function() return helpers.port_open(port) end, 10), h.log())
    local res = helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))
    assert.equal(200, res.status)
    assert.equal("installed\n", res.body)
    assert.equal("prefix", res.headers["x-from"])
    assert.truthy(helpers.eventually(function() return helpers.read_file(dir .. "/run.pid") end, 5))
    assert.equal(0, h.stop())
  end)

  it("tells systemd when it is ready (Type=notify) and checks user/group with -t", function()
    local sock = helpers.tmpname("notify", ".sock")
    local got = helpers.tmpname("notify", ".txt")
    -- A datagram socket standing in for systemd's, read by python3.
    local py = helpers.spawn(([[python3 -c 'import socket,sys
s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(20)
m=s.recv(4096); open(sys.argv[2],"wb").write(m)' %s %s]]):format(sock, got), got .. ".log")
    assert.truthy(helpers.eventually(function() return helpers.read_file(sock) ~= nil or
      select(2, helpers.run("test -S " .. sock)) == 0 end, 5))
    local port = helpers.free_port()
    local mr = helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, routes = { { path = "/", handler = function() return 200 end } } }
]]):format(port), { env = { NOTIFY_SOCKET = sock } })
    local msg = helpers.eventually(function() return helpers.read_file(got) end, 10)
    assert.truthy(msg, py.log())
    assert.matches("^READY=1\nMAINPID=" .. mr.pid, msg)
    assert.equal(0, mr.stop())
    -- As root with user/group: the listeners are bound, then every thread runs as that account.
    if helpers.run("id -u"):match("^0") and helpers.run("getent passwd nobody") ~= "" then
      local p2 = helpers.free_port()
      local dir = helpers.tmpname("drop", "")
      helpers.run("mkdir -p " .. dir .. " && chmod 755 " .. dir)
      local grp = helpers.run("id -gn nobody"):gsub("%s+$", "")
      local m2 = helpers.start_moonring(([[
return { workers = 2, user = "nobody", group = %q, pid = %q, listen = { "127.0.0.1:%d" },
  routes = { { path = "/", handler = function() return 200, "dropped" end } } }
]]):format(grp, dir .. "/mr.pid", p2))
      assert.equal("dropped", helpers.http("GET", ("http://127.0.0.1:%d/"):format(p2)).body)
      local status = helpers.read_file(("/proc/%d/status"):format(m2.pid))
      local uid = helpers.run("id -u nobody"):gsub("%s+$", "")
      assert.matches("\nUid:%s+" .. uid .. "%s+" .. uid .. "%s+" .. uid, status)
      for tid in helpers.run(("ls /proc/%d/task"):format(m2.pid)):gmatch("%d+") do
        local st = helpers.read_file(("/proc/%d/task/%s/status"):format(m2.pid, tid)) or ""
        assert.matches("\nUid:%s+" .. uid .. "%s", st)
      end
      assert.truthy(helpers.eventually(function() return helpers.read_file(dir .. "/mr.pid") end, 5))
      assert.equal(0, m2.stop())
    end
    local ok, out = helpers.moonring_check([[
return { user = "no-such-user-here", listen = { "127.0.0.1:1" }, routes = { { path = "/", handler = function() end } } }]])
    assert.is_false(ok)
    assert.matches('user: no such user "no%-such%-user%-here"', out)
    ok, out = helpers.moonring_check([[
return { user = "root", group = 0, listen = { "127.0.0.1:1" }, routes = { { path = "/", handler = function() end } } }]])
    assert.is_true(ok, out)
  end)
end)
