-- moonring -t catches what would make a start fail, naming the key (file:line: key: ...):
-- log and pid files that cannot be opened for writing, an admin address that is not loopback,
-- a listen address taken by another program, certificate files that cannot be read.
local helpers = require "helpers"
local socket = require "socket"

local shq = helpers.shell_quote

local dir

setup(function()
  dir = helpers.tmpname("check")
  assert(os.execute("mkdir -p " .. shq(dir)))
end)

teardown(function()
  helpers.stop_all()
  os.execute("rm -rf " .. shq(dir))
end)

-- A config whose line 3 is `extra` (one line), in dir.
local n = 0
local function conf(extra, port)
  n = n + 1
  local path = dir .. "/c" .. n .. ".lua"
  helpers.write_file(path, ([[
return {
  listen = { "127.0.0.1:%d" },
  %s
  routes = { { path = "/", handler = function() return 200, "ok" end } },
}
]]):format(port or helpers.free_port(), extra))
  return path
end

local function check(path, as_nobody)
  local prefix = as_nobody and "setpriv --reuid=65534 --regid=65534 --clear-groups " or ""
  return helpers.run(prefix .. shq(helpers.moonring_bin) .. " -t -c " .. shq(path) .. " 2>&1")
end

local function refused(path, as_nobody)
  local out, rc = check(path, as_nobody)
  assert.equal(1, rc, out)
  return (out:gsub("^moonring: configuration .- is invalid: ", ""):gsub("\n$", ""))
end

describe("moonring -t", function()
  it("refuses error_log, access_log and pid paths in a missing directory, with the key", function()
    local p = conf('error_log = "nodir/error.log",')
    assert.equal(p .. ":3: error_log: " .. dir .. "/nodir/error.log: cannot open for writing (No such file or directory)",
      refused(p))
    p = conf('access_log = "nodir/access.log",')
    assert.equal(p .. ":3: access_log: " .. dir .. "/nodir/access.log: cannot open for writing (No such file or directory)",
      refused(p))
    p = conf('pid = "/proc/nodir/mr.pid",')
    assert.equal(p .. ":3: pid: /proc/nodir/mr.pid: cannot open for writing (No such file or directory)", refused(p))
    -- a path whose directory is a file
    helpers.write_file(dir .. "/plain", "")
    p = conf('pid = "plain/mr.pid",')
    assert.equal(p .. ":3: pid: " .. dir .. "/plain/mr.pid: cannot open for writing (Not a directory)", refused(p))
  end)

  it("refuses log paths the user may not write, and leaves no file behind when it may", function()
    local locked = dir .. "/locked"
    assert(os.execute("mkdir -p " .. shq(locked) .. " && chmod 755 " .. shq(locked)))
    os.execute("chmod 755 " .. shq(dir))
    local p = conf('error_log = "locked/error.log",')
    assert.equal(p .. ":3: error_log: " .. locked .. "/error.log: cannot open for writing (Permission denied)",
      refused(p, true))
    helpers.write_file(locked .. "/access.log", "")
    p = conf('access_log = "locked/access.log",')
    assert.equal(p .. ":3: access_log: " .. locked .. "/access.log: cannot open for writing (Permission denied)",
      refused(p, true))
    -- as root the same config passes, and -t did not create the error log
    p = conf('error_log = "locked/error.log", pid = "locked/mr.pid",')
    local out, rc = check(p)
    assert.equal(0, rc, out)
    assert.is_nil(helpers.read_file(locked .. "/error.log"))
    assert.is_nil(helpers.read_file(locked .. "/mr.pid"))
  end)

  it("refuses an admin address that is not loopback (a start and a reload refuse it too)", function()
    local p = conf('admin = { listen = "0.0.0.0:9901" },')
    assert.matches("^" .. p:gsub("%p", "%%%0") .. ":3: admin%.listen: 0%.0%.0%.0:9901 is not a loopback address",
      refused(p))
    p = conf('admin = { listen = "*:9901" },')
    assert.matches(":3: admin.listen: 0.0.0.0:9901 is not a loopback address", refused(p), 1, true)
    -- a name counts by what it resolves to
    local out, rc = check(conf(('admin = { listen = "localhost:%d" },'):format(helpers.free_port())))
    assert.equal(0, rc, out)
    local port = helpers.free_port()
    local h = helpers.spawn(shq(helpers.moonring_bin) .. " -c " .. shq(conf('admin = { listen = "0.0.0.0:9901" },', port)))
    assert.equal(1, h.wait(10))
    assert.matches("admin.listen: 0.0.0.0:9901 is not a loopback address", h.log(), 1, true)
  end)

  it("refuses a listen or admin address another program holds, naming the key", function()
    local taken = assert(socket.bind("127.0.0.1", 0))
    local _, tport = taken:getsockname()
    local p = conf("", tonumber(tport))
    assert.equal(p .. ":2: listen[1]: cannot bind 127.0.0.1:" .. tport .. " (Address already in use)", refused(p))
    p = conf(('admin = { listen = "127.0.0.1:%d" },'):format(tport))
    assert.equal(p .. ":3: admin.listen: cannot bind 127.0.0.1:" .. tport .. " (Address already in use)", refused(p))
    taken:close()
  end)

  it("passes while a moonring already serves the same config (its own listeners do not count)", function()
    local port, admin = helpers.free_port(), helpers.free_port()
    local path = conf(('admin = { listen = "127.0.0.1:%d" },'):format(admin), port)
    local mr = helpers.start_moonring(helpers.read_file(path), { conf_path = path, wait_port = port })
    assert.truthy(helpers.eventually(function() return helpers.port_open(admin) end, 5))
    local out, rc = check(path)
    assert.equal(0, rc, out)
    assert.matches("is ok", out)
    assert.equal(200, assert(helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))).status)
    mr.stop()
  end)

  it("refuses certificate files that cannot be read, naming the key and the file", function()
    local pki = helpers.pki("checkpki")
    pki.make_ca("ca", "Check CA")
    pki.leaf("srv", "ec", "/CN=localhost", "ca", "subjectAltName=DNS:localhost\n")
    local function tls(cert, key)
      return conf(('listen = { { addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } } },'):format(
        helpers.free_port(), cert, key))
    end
    -- the line above replaces the default listen: drop that one
    local function fix(path)
      local s = helpers.read_file(path):gsub('  listen = { "127%.0%.0%.1:%d+" },\n', "", 1)
      helpers.write_file(path, s)
      return path
    end
    local p = fix(tls(pki.path("none.pem"), pki.path("srv.key")))
    assert.matches(":2: listen[1].tls.cert: " .. pki.path("none.pem") .. ": cannot read (No such file or directory)",
      refused(p), 1, true)
    p = fix(tls(pki.dir, pki.path("srv.key")))
    assert.matches(":2: listen[1].tls.cert: " .. pki.dir .. ": cannot read (Is a directory)", refused(p), 1, true)
    assert(os.execute("chmod 600 " .. shq(pki.path("srv.key")) .. " && chmod 755 " .. shq(pki.dir)))
    p = fix(tls(pki.path("srv.pem"), pki.path("srv.key")))
    assert.matches(":2: listen[1].tls.key: " .. pki.path("srv.key") .. ": cannot read (Permission denied)",
      refused(p, true), 1, true)
    local out, rc = check(p)
    assert.equal(0, rc, out)
    pki.remove()
  end)
end)

describe("moonring -t on filters and route patterns", function()
  local function route(r, extra)
    n = n + 1
    local path = dir .. "/f" .. n .. ".lua"
    helpers.write_file(path, ([[
return {
  listen = { "127.0.0.1:%d" },
  %s
  routes = {
    %s,
  },
}
]]):format(helpers.free_port(), extra or "", r))
    return path
  end

  it("refuses a misspelt phase, so an auth filter cannot silently do nothing", function()
    local p = route('{ path = "/", handler = function() return 200 end, filters = { { on_reqest = function(req) req:respond(401) end } } }')
    assert.equal(p .. ":5: routes[1].filters[1].on_reqest: unknown filter phase 'on_reqest' (did you mean 'on_request'?)",
      refused(p))
  end)

  it("refuses an unsupported form and a bad stock-filter option", function()
    local p = route('{ path = "/", handler = function() return 200 end, filters = { { function() end, {} } } }')
    assert.matches(":5: routes[1].filters[1]: { function, ... } is not a filter form", refused(p), 1, true)
    p = route('{ path = "/", handler = function() return 200 end, filters = { { "moonring.filters.basic_auth", { user = {} } } } }')
    assert.matches(":5: routes[1].filters[1]: moonring.filters.basic_auth: unknown option 'user' (did you mean 'users'?)",
      refused(p), 1, true)
  end)

  it("runs factories with the shared dicts created (rate_limit checks its dict at load)", function()
    local r = '{ path = "/", handler = function() return 200 end, filters = { { "moonring.filters.rate_limit", { dict = "rl", rate = 5 } } } }'
    assert.matches("routes[1].filters[1]: moonring.filters.rate_limit: option 'dict' is invalid: no shared dict named 'rl'",
      refused(route(r)), 1, true)
    local out, rc = check(route(r, 'shared = { rl = "1m" },'))
    assert.equal(0, rc, out)
  end)

  it("refuses a headers value that is not a valid Lua pattern", function()
    local p = route('{ path = "/", headers = { ["X-Version"] = "~^v(%d+" }, handler = function() return 200 end }')
    assert.equal(p .. ':5: routes[1].headers["X-Version"]: bad Lua pattern "^v(%d+": unfinished capture (missing \')\')',
      refused(p))
  end)
end)

describe("a start", function()
  it("fails when the pid file cannot be written, naming the key", function()
    local port = helpers.free_port()
    local h = helpers.spawn(shq(helpers.moonring_bin) .. " -c " .. shq(conf('pid = "nodir/mr.pid",', port)))
    assert.equal(1, h.wait(10))
    assert.matches("pid: " .. dir .. "/nodir/mr.pid: cannot write the pid file (No such file or directory)", h.log(),
      1, true)
    assert.is_false(helpers.port_open(port))
  end)
end)
