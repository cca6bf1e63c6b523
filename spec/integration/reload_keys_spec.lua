-- A reload applies the process-level keys (log_level, error_log, access_log, access_log_format,
-- pid, admin, a kept listener's backlog) or refuses, naming the key, the ones that take a
-- restart (workers, loop). Nothing is silently ignored.
local helpers = require "helpers"

local shq = helpers.shell_quote
local read = helpers.read_file

local function contains(path, s)
  return (read(path) or ""):find(s, 1, true) ~= nil
end

describe("reload of process-level keys", function()
  local dir, port, conf_path, mr
  local admin -- the admin port the instance listens on now
  local o     -- the options of the config now served

  local function config(opts)
    local function opt(k, v) return v and ("  %s = %s,\n"):format(k, v) or "" end
    return "return {\n" ..
      opt("workers", opts.workers or 1) ..
      opt("log_level", opts.log_level and ("%q"):format(opts.log_level)) ..
      opt("error_log", opts.error_log and ("%q"):format(opts.error_log)) ..
      opt("access_log", opts.access_log ~= nil and (opts.access_log and ("%q"):format(opts.access_log) or "false")) ..
      opt("access_log_format", opts.format and ("%q"):format(opts.format)) ..
      opt("pid", opts.pid and ("%q"):format(opts.pid)) ..
      opt("admin", opts.admin and ('{ listen = "127.0.0.1:%d" }'):format(opts.admin)) ..
      ('  listen = { { addr = "127.0.0.1:%d", backlog = %d } },\n'):format(port, opts.backlog or 511) ..
      "  routes = {\n" ..
      '    { path = "/log", handler = function(req)\n' ..
      '        require("moonring").log("info", "marker " .. req:arg("m"))\n' ..
      '        return 200, "logged\\n"\n' ..
      "      end },\n" ..
      ('    { path = "/", handler = function() return 200, %q end },\n'):format(opts.version or "v1") ..
      "  },\n}\n"
  end

  -- Writes the config with `changes` over the current options; reloads through the admin
  -- endpoint (or `via`: a function doing the reload); returns the status and body.
  local function reload(changes, via)
    local next = {}
    for k, v in pairs(o) do next[k] = v end
    for k, v in pairs(changes) do next[k] = v end
    if changes.access_log == false then next.access_log = false end
    helpers.write_file(conf_path, config(next))
    local status, body
    if via then
      status, body = via()
    else
      local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
      status, body = res.status, res.body
    end
    if status == 200 then o = next end
    return status, body
  end

  local function get(path)
    return assert(helpers.http("GET", ("http://127.0.0.1:%d%s"):format(port, path)))
  end

  setup(function()
    dir = helpers.tmpname("reloadkeys")
    assert(os.execute("mkdir -p " .. shq(dir)))
    port = helpers.free_port()
    admin = helpers.free_port()
    conf_path = dir .. "/moonring.lua"
    o = { log_level = "notice", error_log = "error1.log", access_log = "access1.log", admin = admin,
          pid = "one.pid", version = "v1" }
    mr = helpers.start_moonring(config(o), { conf_path = conf_path, wait_port = port })
    assert.truthy(helpers.eventually(function() return helpers.port_open(admin) end, 5))
  end)

  teardown(function()
    helpers.stop_all()
    os.execute("rm -rf " .. shq(dir))
  end)

  it("applies a log_level change", function()
    assert.equal(200, get("/log?m=quiet").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/error1.log", "started") end, 5))
    assert.is_false(contains(dir .. "/error1.log", "marker quiet"))
    local status, body = reload({ log_level = "info" })
    assert.equal(200, status, body)
    assert.equal(200, get("/log?m=loud").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/error1.log", "marker loud") end, 5))
    status, body = reload({ log_level = "warn" })
    assert.equal(200, status, body)
    assert.equal(200, get("/log?m=quiet2").status)
    helpers.sleep(0.2)
    assert.is_false(contains(dir .. "/error1.log", "marker quiet2"))
    assert.equal(200, (reload({ log_level = "info" })))
  end)

  it("writes to the new file after an error_log change, workers included", function()
    local status, body = reload({ error_log = "error2.log" })
    assert.equal(200, status, body)
    assert.equal(200, get("/log?m=moved").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/error2.log", "marker moved") end, 5))
    assert.truthy(contains(dir .. "/error2.log", "serving in every worker"))
    assert.is_false(contains(dir .. "/error1.log", "marker moved"))
    -- and back to stderr (the process's own, here the spawn log)
    status, body = reload({ error_log = "stderr" })
    assert.equal(200, status, body)
    assert.equal(200, get("/log?m=on-stderr").status)
    assert.truthy(helpers.eventually(function() return mr.log():find("marker on-stderr", 1, true) end, 5))
    assert.is_false(contains(dir .. "/error2.log", "marker on-stderr"))
  end)

  it("reopens the error log file at every reload (log rotation)", function()
    assert.equal(200, (reload({ error_log = "error3.log" })))
    os.rename(dir .. "/error3.log", dir .. "/error3.log.1")
    assert.equal(200, (reload({})))
    assert.equal(200, get("/log?m=rotated").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/error3.log", "marker rotated") end, 5))
    assert.is_false(contains(dir .. "/error3.log.1", "marker rotated"))
  end)

  it("applies access_log path, on/off and format changes", function()
    assert.equal(200, get("/a1").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/access1.log", '"GET /a1 HTTP/1.1" 200') end, 5))
    local status, body = reload({ access_log = "access2.log", format = "json" })
    assert.equal(200, status, body)
    assert.equal(200, get("/a2").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/access2.log", '"uri":"/a2"') end, 5))
    assert.is_false(contains(dir .. "/access1.log", "/a2"))
    status, body = reload({ access_log = false })
    assert.equal(200, status, body)
    assert.equal(200, get("/a3").status)
    status, body = reload({ access_log = "access1.log", format = "combined" })
    assert.equal(200, status, body)
    assert.equal(200, get("/a4").status)
    assert.truthy(helpers.eventually(function() return contains(dir .. "/access1.log", '"GET /a4 HTTP/1.1" 200') end, 5))
    assert.is_false(contains(dir .. "/access1.log", "/a3"))
    assert.is_false(contains(dir .. "/access2.log", "/a3"))
  end)

  it("refuses a log path it cannot open, naming the key, and keeps serving", function()
    local status, body = reload({ error_log = "nodir/error.log", version = "never" })
    assert.equal(500, status)
    assert.matches(":%d+: error_log: ", body)
    assert.matches(conf_path .. ":4: error_log: " .. dir .. "/nodir/error.log: cannot open for writing", body, 1, true)
    status, body = reload({ access_log = "nodir/access.log", version = "never" })
    assert.equal(500, status)
    assert.matches("access_log: " .. dir .. "/nodir/access.log: cannot open for writing", body, 1, true)
    assert.equal("v1", get("/").body)
    helpers.write_file(conf_path, config(o))
  end)

  it("refuses a filter with a misspelt phase and keeps serving", function()
    helpers.write_file(conf_path, (config(o):gsub('{ path = "/", handler', '{ path = "/", filters = { { on_reqest = print } }, handler')))
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(500, res.status)
    assert.matches("routes[2].filters[1].on_reqest: unknown filter phase 'on_reqest' (did you mean 'on_request'?)",
      res.body, 1, true)
    assert.equal("v1", get("/").body)
    helpers.write_file(conf_path, config(o))
  end)

  it("moves the pid file", function()
    assert.equal(tostring(mr.pid), (read(dir .. "/one.pid") or ""):match("%d+"))
    local status, body = reload({ pid = "two.pid" })
    assert.equal(200, status, body)
    assert.equal(tostring(mr.pid), (read(dir .. "/two.pid") or ""):match("%d+"))
    assert.is_nil(read(dir .. "/one.pid"))
  end)

  it("refuses a workers change, naming the key, through POST /-/reload and moonring -s reload", function()
    local status, body = reload({ workers = 2, version = "v2" })
    assert.equal(500, status)
    assert.matches(conf_path .. ":2: workers: changing it (1 to 2) takes a restart or a binary upgrade", body, 1, true)
    assert.equal("v1", get("/").body)
    local out, rc = helpers.run(shq(helpers.moonring_bin) .. " -s reload -c " .. shq(conf_path) .. " 2>&1")
    assert.equal(1, rc, out)
    assert.matches("workers: changing it (1 to 2) takes a restart or a binary upgrade (moonring -s upgrade)", out, 1, true)
    assert.equal("v1", get("/").body)
    assert.truthy(mr.log():find("reload refused", 1, true) or contains(dir .. "/error3.log", "reload refused"))
    helpers.write_file(conf_path, config(o))
  end)

  it("applies a new backlog to a kept listener (same socket)", function()
    local inodes = helpers.listen_inodes(port)
    local function backlog()
      local out = helpers.run("ss -Hltn 'sport = :" .. port .. "'")
      return tonumber(out:match("LISTEN%s+%d+%s+(%d+)"))
    end
    assert.equal(511, backlog())
    assert.equal(200, (reload({ backlog = 77 })))
    assert.equal(77, backlog())
    assert.equal(inodes, helpers.listen_inodes(port))
  end)

  it("moves, removes and adds the admin endpoint", function()
    local old, new = admin, helpers.free_port()
    local status, body = reload({ admin = new })
    assert.equal(200, status, body)
    admin = new
    assert.truthy(helpers.eventually(function() return not helpers.port_open(old) end, 5))
    local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/-/status"):format(new)))
    assert.equal(200, res.status)
    -- removed
    status, body = reload({ admin = false })
    assert.equal(200, status, body)
    assert.truthy(helpers.eventually(function() return not helpers.port_open(new) end, 5))
    -- added back by `moonring -s reload`: the new address does not answer yet, so -s falls
    -- back to the pid file
    local third = helpers.free_port()
    status = reload({ admin = third, version = "v3" }, function()
      local out, rc = helpers.run(shq(helpers.moonring_bin) .. " -s reload -c " .. shq(conf_path) .. " 2>&1")
      assert.matches("signalling through the pid file", out, 1, true)
      return rc == 0 and 200 or 500, out
    end)
    assert.equal(200, status)
    admin = third
    assert.truthy(helpers.eventually(function() return helpers.port_open(third) end, 5))
    assert.truthy(helpers.eventually(function() return get("/").body == "v3" end, 5))
    -- and the reload answers through it
    status, body = reload({ version = "v4" })
    assert.equal(200, status, body)
    assert.equal("v4", get("/").body)
  end)

  it("refuses an admin address it cannot bind or that is not loopback", function()
    local taken = assert(require("socket").bind("127.0.0.1", 0))
    local _, tport = taken:getsockname()
    local status, body = reload({ admin = tonumber(tport), version = "never" })
    assert.equal(500, status)
    assert.matches("admin.listen: cannot bind 127.0.0.1:" .. tport .. " (Address already in use)", body, 1, true)
    taken:close()
    helpers.write_file(conf_path, (config(o):gsub('listen = "127%.0%.0%.1:', 'listen = "0.0.0.0:')))
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(500, res.status)
    assert.matches("is not a loopback address", res.body, 1, true)
    assert.equal("v4", get("/").body)
    helpers.write_file(conf_path, config(o))
  end)
end)

describe("reload of the loop key", function()
  it("refuses a change, naming the key (when MOONRING_LOOP does not decide)", function()
    local dir = helpers.tmpname("reloadloop")
    assert(os.execute("mkdir -p " .. shq(dir)))
    local port, admin = helpers.free_port(), helpers.free_port()
    local function config(loop, version)
      return ([[
return { workers = 1, loop = %q, admin = { listen = "127.0.0.1:%d" }, listen = { "127.0.0.1:%d" },
  routes = { { path = "/", handler = function() return 200, %q end } } }
]]):format(loop, admin, port, version)
    end
    local conf_path = dir .. "/moonring.lua"
    helpers.write_file(conf_path, config("epoll", "v1"))
    local h = helpers.spawn("env -u MOONRING_LOOP " .. shq(helpers.moonring_bin) .. " -c " .. shq(conf_path))
    h.is_moonring = true
    assert.truthy(helpers.eventually(function() return helpers.port_open(admin) end, 10), h.log())
    helpers.write_file(conf_path, config("auto", "v2"))
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(500, res.status)
    assert.matches('loop: changing it (\\"epoll\\" to \\"auto\\") takes a restart or a binary upgrade', res.body, 1, true)
    assert.equal("v1", assert(helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))).body)
    -- the same value reloads
    helpers.write_file(conf_path, config("epoll", "v3"))
    res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/reload"):format(admin), { timeout = 10 }))
    assert.equal(200, res.status, res.body)
    assert.equal("v3", assert(helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))).body)
    h.stop()
    helpers.stop_all()
    os.execute("rm -rf " .. shq(dir))
  end)
end)
