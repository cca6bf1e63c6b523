-- One rule for relative paths: every key that names a file is relative to the config file's
-- directory, whatever the working directory (a systemd unit runs ExecStart and ExecReload in /).
-- The binary runs here from / and from other directories, never from the config's.
local helpers = require "helpers"

local shq = helpers.shell_quote

describe("relative paths in the config", function()
  local dir, pki, port, conf_path, mr

  local function config(version)
    return ([[
return {
  workers = 1,
  pid = "run/mr.pid",
  error_log = "logs/error.log",
  access_log = "logs/access.log",
  lua_path = "vendor/?.lua",
  listen = { "127.0.0.1:%d" },
  lua = { ssl_trusted_certificate = "../%s/ca.pem" },
  upstreams = { secure = { servers = { "https://127.0.0.1:9" },
                           tls = { ca = "../%s/ca.pem", cert = "../%s/client.pem", key = "../%s/client.key" } } },
  routes = {
    { path = "/", handler = function() return 200, %q end,
      filters = { "near_filter", { "far_filter", { value = "from-vendor" } } } },
  },
}
]]):format(port, pki.name, pki.name, pki.name, pki.name, version)
  end

  local function run_in(cwd, args)
    return helpers.run("cd " .. shq(cwd) .. " && " .. shq(helpers.moonring_bin) .. " " .. args .. " 2>&1")
  end

  setup(function()
    dir = helpers.tmpname("relconf")
    assert(os.execute("mkdir -p " .. shq(dir .. "/logs") .. " " .. shq(dir .. "/run") .. " " .. shq(dir .. "/vendor")))
    pki = helpers.pki("relpki")
    pki.name = pki.dir:match("[^/]+$")
    pki.make_ca("ca", "Test CA")
    pki.leaf("client", "ec", "/CN=client", "ca", "extendedKeyUsage=clientAuth\n")
    helpers.write_file(dir .. "/near_filter.lua",
      'return { on_response = function(res) res:set_header("X-Near", "yes") end }\n')
    helpers.write_file(dir .. "/vendor/far_filter.lua",
      'return function(opts) return { on_response = function(res) res:set_header("X-Far", opts.value) end } end\n')
    port = helpers.free_port()
    conf_path = dir .. "/moonring.lua"
    helpers.write_file(conf_path, config("v1\n"))
  end)

  teardown(function()
    helpers.stop_all()
    pki.remove()
    os.execute("rm -rf " .. shq(dir))
  end)

  it("are checked by -t from any directory, with an absolute or a relative -c", function()
    local out, rc = run_in("/", "-t -c " .. shq(conf_path))
    assert.equal(0, rc, out)
    assert.matches("is ok", out)
    out, rc = run_in(helpers.tmp, "-t -c " .. shq(dir:match("[^/]+$") .. "/moonring.lua"))
    assert.equal(0, rc, out)
    -- and the same file, from the config's own directory, is no different
    out, rc = run_in(dir, "-t -c moonring.lua")
    assert.equal(0, rc, out)
  end)

  it("name a missing file by its absolute path", function()
    local broken = dir .. "/broken.lua"
    helpers.write_file(broken, (config("x"):gsub('ca = "%.%./[^"]*/ca%.pem"', 'ca = "certs/none.pem"')))
    local out, rc = run_in("/", "-t -c " .. shq(broken))
    assert.equal(1, rc)
    assert.matches("upstreams.secure.tls.ca: " .. dir .. "/certs/none.pem: cannot read (No such file or directory)",
      out, 1, true)
    os.remove(broken)
  end)

  it("start from /: filter modules, logs and the pid file are found next to the config", function()
    local h = helpers.spawn("cd / && exec " .. shq(helpers.moonring_bin) .. " -c " .. shq(conf_path),
      helpers.tmpname("relconf", ".log"))
    h.is_moonring = true
    mr = h
    assert.truthy(helpers.eventually(function() return helpers.port_open(port) or not h.alive() end, 10))
    assert.is_true(h.alive(), h.log())
    local res = assert(helpers.http("GET", ("http://127.0.0.1:%d/x"):format(port)))
    assert.equal(200, res.status)
    assert.equal("v1\n", res.body)
    assert.equal("yes", res.headers["x-near"])
    assert.equal("from-vendor", res.headers["x-far"])
    assert.truthy(helpers.eventually(function()
      return (helpers.read_file(dir .. "/run/mr.pid") or ""):match("%d+") == tostring(h.pid)
    end, 5))
    assert.truthy(helpers.eventually(function()
      return (helpers.read_file(dir .. "/logs/error.log") or ""):find("started", 1, true)
    end, 5))
    assert.truthy(helpers.eventually(function()
      return (helpers.read_file(dir .. "/logs/access.log") or ""):find('"GET /x HTTP/1.1" 200', 1, true)
    end, 5))
  end)

  it("reload through moonring -s reload run from another directory", function()
    assert.is_not_nil(mr, "needs the instance of the previous test")
    helpers.write_file(conf_path, config("v2\n"))
    local out, rc = run_in("/tmp", "-s reload -c " .. shq(conf_path))
    assert.equal(0, rc, out)
    assert.truthy(helpers.eventually(function()
      local res = helpers.http("GET", ("http://127.0.0.1:%d/x"):format(port))
      return res and res.body == "v2\n" and res.headers["x-far"] == "from-vendor"
    end, 5))
    -- -s stop through the same pid file, from yet another directory
    out, rc = run_in(helpers.tmp, "-s stop -c " .. shq(conf_path))
    assert.equal(0, rc, out)
    assert.equal(0, mr.wait(10))
    assert.is_nil(helpers.read_file(dir .. "/run/mr.pid"))
  end)
end)
