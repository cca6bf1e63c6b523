-- Binary upgrade (SIGUSR2, moonring -s upgrade): the new process adopts every listening socket,
-- the old one stops accepting, drains and exits; zero failed requests under load, the same
-- listening sockets (inodes), and a failed start leaves the old process serving.
local helpers = require "helpers"

local write = helpers.write_file

local read = helpers.read_file

local listen_inodes = helpers.listen_inodes

local alive = helpers.pid_alive

-- Upgraded processes are not children of the spec's spawn wrapper: stop them by pid, then the rest.
local function stop_upgraded(pids, serving, mr)
  if serving then pids[#pids + 1] = serving end
  for _, pid in ipairs(pids) do
    if pid ~= mr.pid and alive(pid) then helpers.kill(pid, "TERM") end
  end
  for _, pid in ipairs(pids) do helpers.eventually(function() return not alive(pid) end, 10) end
  helpers.stop_all()
end

describe("binary upgrade", function()
  local origin, port, admin, pid_path, mr
  local pids = {}

  local function config(version, opts)
    opts = opts or {}
    return ([[
return {
  workers = 2,
  pid = %q,
  listen = { "127.0.0.1:%d" },
  %s
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { path = "/version", handler = function(req) return 200, %q end },
    { path = "/", upstream = "origin" },
  },
  %s
}
]]):format(pid_path, port, opts.admin and ("admin = { listen = \"127.0.0.1:%d\" },"):format(admin) or "",
      origin.port, version, opts.broken and "broken = syntax error here" or "")
  end

  local function current_pid() return tonumber(read(pid_path) or "") end

  local function get(path)
    local res = helpers.http("GET", ("http://127.0.0.1:%d%s"):format(port, path or "/version"))
    return res and res.status == 200 and res.body or nil
  end

  setup(function()
    origin = helpers.start_origin()
    port, admin = helpers.free_port(), helpers.free_port()
    pid_path = helpers.tmpname("upgrade", ".pid")
    mr = helpers.start_moonring(config("v1"), { wait_port = port })
    assert.truthy(helpers.eventually(function() return current_pid() == mr.pid end, 5))
  end)

  teardown(function() stop_upgraded(pids, current_pid(), mr) end)

  it("hands over under load with zero failed requests; the old process exits", function()
    local before = listen_inodes(port)
    assert.is_true(#before > 0)
    local wrk = helpers.spawn(("wrk -t1 -c8 -d4s --timeout 5s http://127.0.0.1:%d/version"):format(port))
    local wrk_up = helpers.spawn(("wrk -t1 -c4 -d4s --timeout 5s http://127.0.0.1:%d/bytes/2000"):format(port))
    helpers.sleep(1)
    mr.signal("USR2")
    assert.truthy(helpers.eventually(function() return current_pid() and current_pid() ~= mr.pid end, 10), mr.log())
    local new = current_pid()
    pids[#pids + 1] = new
    assert.equal(0, mr.wait(15), mr.log())
    assert.truthy(mr.log():find("new process " .. new .. " is serving", 1, true), mr.log())
    for _, h in ipairs({ wrk, wrk_up }) do
      assert.equal(0, h.wait(15))
      local w = helpers.parse_wrk(h.log())
      assert.is_true(w.requests > 100, h.log())
      for k, v in pairs(w.errors) do assert.equal(0, v, k .. " errors: " .. h.log()) end
      assert.is_nil(h.log():find("Non-2xx", 1, true), h.log())
    end
    assert.equal("v1", get())
    assert.is_true(alive(new))
    assert.equal(before, listen_inodes(port))
  end)

  it("keeps the old process serving when the new one cannot start", function()
    local serving = current_pid()
    write(mr.conf_path, config("v2", { broken = true }))
    local log0 = #mr.log()
    assert.is_true(helpers.kill(serving, "USR2"))
    assert.truthy(helpers.eventually(function()
      return mr.log():sub(log0):find("upgrade failed, this process keeps serving", 1, true) ~= nil
    end, 10), mr.log():sub(log0))
    -- The new process says why (file and line), the old one that it exited first.
    assert.matches("configuration .* is invalid: .*:%d+:", mr.log():sub(log0))
    assert.truthy(mr.log():sub(log0):find("exited with code 1 before it was ready", 1, true))
    assert.equal(serving, current_pid())
    assert.is_true(alive(serving))
    assert.equal("v1", get())
  end)

  it("upgrades through moonring -s upgrade (pid file, then admin endpoint reporting the new pid)", function()
    local serving = current_pid()
    write(mr.conf_path, config("v3"))
    -- No admin endpoint in the config: -s upgrade sends SIGUSR2 through the pid file.
    local out, rc = helpers.run(("%s -s upgrade -c %s 2>&1"):format(helpers.moonring_bin, mr.conf_path))
    assert.equal(0, rc, out)
    assert.truthy(helpers.eventually(function() return current_pid() ~= serving end, 10), mr.log())
    local second = current_pid()
    pids[#pids + 1] = second
    assert.truthy(helpers.eventually(function() return not alive(serving) end, 15))
    assert.equal("v3", get())
    -- An upgrade also reads the config anew: this one brings an admin endpoint up.
    write(mr.conf_path, config("v4", { admin = true }))
    assert.is_true(helpers.kill(second, "USR2"))
    assert.truthy(helpers.eventually(function() return current_pid() ~= second end, 10), mr.log())
    local third = current_pid()
    pids[#pids + 1] = third
    assert.truthy(helpers.eventually(function() return not alive(second) end, 15))
    assert.equal("v4", get())
    -- With the admin endpoint, -s upgrade answers once the new process serves.
    out, rc = helpers.run(("%s -s upgrade -c %s 2>&1"):format(helpers.moonring_bin, mr.conf_path))
    assert.equal(0, rc, out)
    local fourth = tonumber(out:match('"pid":(%d+)'))
    assert.is_number(fourth, out)
    pids[#pids + 1] = fourth
    assert.equal(fourth, current_pid())
    assert.truthy(helpers.eventually(function() return not alive(third) end, 15))
    assert.equal("v4", get())
  end)
end)

describe("binary upgrade to a new binary on disk", function()
  local port, admin, pid_path, bin, mr
  local pids = {}

  local function current_pid() return tonumber(read(pid_path) or "") end

  -- Replaces the binary the way a package manager or `make install` does: a new file renamed
  -- over the old path. The running process's /proc/self/exe then names a deleted file.
  local function install(script)
    write(bin .. ".new", script)
    assert(os.execute("chmod +x '" .. bin .. ".new'") == 0)
    assert(os.rename(bin .. ".new", bin))
  end

  setup(function()
    port, admin = helpers.free_port(), helpers.free_port()
    pid_path = helpers.tmpname("upgrade-bin", ".pid")
    bin = helpers.tmpname("moonring-copy", "")
    assert(os.execute(("cp '%s' '%s'"):format(helpers.moonring_bin, bin)) == 0)
    local conf = ([[
return {
  workers = 2,
  pid = %q,
  listen = { "127.0.0.1:%d" },
  admin = { listen = "127.0.0.1:%d" },
  routes = { { path = "/", handler = function() return 200, "ok" end } },
}
]]):format(pid_path, port, admin)
    local conf_path = helpers.tmpname("moonring", ".lua")
    write(conf_path, conf)
    local h = helpers.spawn(("'%s' -c '%s'"):format(bin, conf_path))
    h.is_moonring = true
    mr = h
    assert.truthy(helpers.eventually(function()
      return helpers.http("GET", ("http://127.0.0.1:%d/-/status"):format(admin))
    end, 10), h.log())
    mr.conf_path = conf_path
  end)

  teardown(function()
    stop_upgraded(pids, current_pid(), mr)
    os.remove(bin)
  end)

  local function upgrade()
    local res = assert(helpers.http("POST", ("http://127.0.0.1:%d/-/upgrade"):format(admin), { timeout = 90 }))
    return res.status, res.body
  end

  it("reports a new binary that dies before it is ready, and keeps serving", function()
    local serving = current_pid()
    install("#!/bin/sh\necho 'broken build starting' >&2\nexit 3\n")
    local status, body = upgrade()
    assert.equal(500, status, body)
    assert.matches("exited with code 3 before it was ready", body, 1, true)
    assert.truthy(mr.log():find("broken build starting", 1, true))
    assert.equal(serving, current_pid())
    assert.equal("ok", assert(helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))).body)
  end)

  it("execs the file now at the binary's path, not the one it was started from", function()
    local serving = current_pid()
    install(("#!/bin/sh\necho 'new build starting' >&2\nexec '%s' \"$@\"\n"):format(helpers.moonring_bin))
    local status, body = upgrade()
    assert.equal(200, status, body)
    local new = tonumber(body:match('"pid":(%d+)'))
    pids[#pids + 1] = new
    assert.equal(new, current_pid())
    assert.truthy(mr.log():find("new build starting", 1, true))
    assert.truthy(helpers.eventually(function() return not alive(serving) end, 15))
    assert.equal("ok", assert(helpers.http("GET", ("http://127.0.0.1:%d/"):format(port))).body)
  end)
end)
