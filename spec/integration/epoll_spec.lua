-- The loop backend choice (issue 8): with io_uring refused by seccomp, as Docker's default profile
-- does, loop = "auto" falls back to epoll with one log line saying why and serves; loop = "io_uring"
-- refuses to start. build/no_uring (spec/fixtures/seccomp_no_uring.c) installs the filter and
-- execs its arguments. These specs pick the backend themselves, so MOONRING_LOOP (set by
-- scripts/test for the other suites) is removed from moonring's environment unless a test sets it.
local helpers = require "helpers"
local socket = require "socket"

local shq = helpers.shell_quote
local bin_dir = helpers.moonring_bin:match("^(.*)/[^/]*$") or "."
local no_uring_bin = os.getenv("MR_NO_URING_BIN") or (bin_dir .. "/no_uring")

local function conf(port, origin_port, loop)
  return ([[
return {
  workers = 1,
  loop = %q,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" }, keepalive = 4 } },
  routes = { { path = "/", upstream = "origin" } },
}
]]):format(loop, port, origin_port)
end

-- The command line that runs moonring on conf_source, refused io_uring unless opts.uring.
local function moonring_cmd(conf_source, opts)
  opts = opts or {}
  local path = helpers.tmpname("moonring-loop", ".lua")
  helpers.write_file(path, conf_source)
  local env = opts.env and ("env -u MOONRING_LOOP " .. opts.env) or "env -u MOONRING_LOOP"
  local wrap = opts.uring and "" or (shq(no_uring_bin) .. " ")
  return env .. " " .. wrap .. shq(helpers.moonring_bin) .. " -c " .. shq(path)
end

-- Starts moonring in the background and waits until it listens on port.
local function start(conf_source, port, opts)
  local h = helpers.spawn(moonring_cmd(conf_source, opts), helpers.tmpname("moonring-loop", ".log"))
  local deadline = socket.gettime() + 10
  while not helpers.port_open(port) do
    if not h.alive() then
      error(("moonring exited with %s before listening:\n%s"):format(tostring(h.exit_code()), h.log()))
    end
    if socket.gettime() > deadline then
      h.stop("KILL")
      error("moonring did not listen within 10s:\n" .. h.log())
    end
    socket.sleep(0.05)
  end
  return h
end

-- Runs moonring expecting it to exit on its own; returns its output and exit code.
local function run_to_exit(conf_source, opts)
  return helpers.run("timeout 10 " .. moonring_cmd(conf_source, opts) .. " 2>&1")
end

-- The port opens when the listener is bound, a little before the main thread logs "started".
local function log_with(mr, text)
  return helpers.eventually(function()
    local log = mr.log()
    return log:find(text, 1, true) and log
  end, 5)
end

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

describe("loop backend", function()
  local origin

  setup(function()
    local f = io.open(no_uring_bin, "rb")
    if not f then error("no_uring not found at " .. no_uring_bin .. " (scripts/build builds it)") end
    f:close()
    origin = helpers.start_origin()
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("the seccomp wrapper really refuses io_uring, and -v says which backend auto gets", function()
    local out, rc = helpers.run("env -u MOONRING_LOOP " .. shq(no_uring_bin) .. " " .. shq(helpers.moonring_bin) .. " -v 2>&1")
    assert.equal(0, rc, out)
    assert.truthy(out:find("io_uring: unavailable (io_uring_setup: EPERM", 1, true), out)
    assert.truthy(out:find("backend: epoll (io_uring_setup: EPERM", 1, true), out)

    out, rc = helpers.run("MOONRING_LOOP=epoll " .. shq(helpers.moonring_bin) .. " -v 2>&1")
    assert.equal(0, rc, out)
    assert.truthy(out:find("backend: epoll (MOONRING_LOOP=epoll)", 1, true), out)
  end)

  it("loop = auto falls back to epoll with one line saying why, and serves", function()
    local port = helpers.free_port()
    local mr = start(conf(port, origin.port, "auto"), port)
    local base = "http://127.0.0.1:" .. port

    local res = assert(helpers.http("GET", base .. "/hello"))
    assert.equal(200, res.status)
    assert.equal("ok " .. origin.port .. " GET /hello\n", res.body)

    -- Keep-alive, a request body and a large response on the same backend.
    local sock = assert(helpers.connect(port))
    for i = 1, 5 do
      local body = helpers.pattern(i * 30000, i)
      local r = assert(helpers.http("POST", base .. "/echo", { sock = sock, body = body }))
      assert.equal(200, r.status)
      assert.equal(body, r.body)
    end
    sock:close()
    local big = assert(helpers.http("GET", base .. "/size/1000000"))
    assert.equal(200, big.status)
    assert.equal(helpers.pattern(1000000), big.body)

    local log = log_with(mr, "started with 1 workers, epoll backend")
    assert.equal(1, count(log, "falling back to the epoll backend"), log)
    assert.truthy(log:find("io_uring is not usable here (io_uring_setup: EPERM", 1, true), log)
    assert.equal(0, mr.stop("TERM"))
  end)

  it("loop = io_uring refuses to start when io_uring is refused", function()
    local port = helpers.free_port()
    local out, rc = run_to_exit(conf(port, origin.port, "io_uring"))
    assert.equal(1, rc, out)
    assert.truthy(out:find('loop = "io_uring" (from config) but io_uring is not usable here: '
      .. "io_uring_setup: EPERM", 1, true), out)
    assert.falsy(helpers.port_open(port))
  end)

  it("MOONRING_LOOP overrides the config's loop", function()
    local port = helpers.free_port()
    local out, rc = run_to_exit(conf(port, origin.port, "auto"), { env = "MOONRING_LOOP=io_uring" })
    assert.equal(1, rc, out)
    assert.truthy(out:find('loop = "io_uring" (from MOONRING_LOOP)', 1, true), out)

    local mr = start(conf(port, origin.port, "io_uring"), port, { env = "MOONRING_LOOP=epoll" })
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/forced"))
    assert.equal(200, res.status)
    local log = log_with(mr, "started with 1 workers, epoll backend")
    assert.falsy(log:find("falling back", 1, true), log)
    assert.equal(0, mr.stop("TERM"))

    out, rc = run_to_exit(conf(port, origin.port, "auto"), { env = "MOONRING_LOOP=kqueue" })
    assert.equal(1, rc, out)
    assert.truthy(out:find('MOONRING_LOOP: loop "kqueue" is not auto, io_uring or epoll', 1, true), out)
  end)

  it("loop = auto picks io_uring where the kernel allows it", function()
    local v = helpers.run(shq(helpers.moonring_bin) .. " -v 2>&1")
    if not v:find("io_uring: yes", 1, true) then
      pending("io_uring is not usable on this machine")
      return
    end
    local port = helpers.free_port()
    local mr = start(conf(port, origin.port, "auto"), port, { uring = true })
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/native"))
    assert.equal(200, res.status)
    local log = log_with(mr, "started with 1 workers, io_uring backend")
    assert.falsy(log:find("falling back", 1, true), log)
    assert.equal(0, mr.stop("TERM"))
  end)
end)
