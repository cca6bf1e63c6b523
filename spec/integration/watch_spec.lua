-- --watch: a development mode that reloads when the config file or a Lua file it loaded changes
-- (in place or renamed over), refuses a broken edit with file:line while the old generation keeps
-- serving, and recovers when the file is fixed.
local helpers = require "helpers"

local write = helpers.write_file

-- The way vim and most IDEs save: a new file renamed over the old one (a new inode).
local function write_by_rename(path, s)
  write(path .. ".tmp", s)
  assert(os.rename(path .. ".tmp", path))
end

describe("--watch", function()
  local port, mr, mod, mod_path, lazy, lazy_path

  local function handler(v) return ("return function(req) return 200, %q end\n"):format(v) end

  local function config(extra)
    return ([[
local h = require(%q)
return {
  workers = 2,
  listen = { "127.0.0.1:%d" },
  routes = {
    { path = "/version", handler = h },
    { path = "/lazy", handler = function(req) return 200, require(%q) end },
    %s
  },
}
]]):format(mod, port, lazy, extra or "")
  end

  local function get(path)
    local res = helpers.http("GET", ("http://127.0.0.1:%d%s"):format(port, path or "/version"))
    return res and res.status == 200 and res.body or nil
  end

  setup(function()
    port = helpers.free_port()
    -- A module next to the config (the config's directory is on the require path).
    mod = "mrwatch" .. port
    mod_path = helpers.tmp .. "/" .. mod .. ".lua"
    write(mod_path, handler("v1"))
    -- Required only when /lazy is first requested, by the worker, not by validation.
    lazy = "mrlazy" .. port
    lazy_path = helpers.tmp .. "/" .. lazy .. ".lua"
    write(lazy_path, 'return "lazy1"\n')
    mr = helpers.start_moonring(config(), { wait_port = port, args = "--watch" })
  end)

  teardown(function()
    helpers.stop_all()
    os.remove(mod_path)
    os.remove(lazy_path)
  end)

  it("reloads when a required handler file is renamed over", function()
    assert.equal("v1", get())
    write_by_rename(mod_path, handler("v2"))
    assert.truthy(helpers.eventually(function() return get() == "v2" end, 5), mr.log())
  end)

  it("reloads when a required handler file is rewritten in place", function()
    write(mod_path, handler("v3"))
    assert.truthy(helpers.eventually(function() return get() == "v3" end, 5), mr.log())
  end)

  it("refuses a broken edit with file:line and keeps serving, then recovers on the fix", function()
    write(mod_path, "return function(req) return 200, 'v4' end oops\n")
    assert.truthy(helpers.eventually(function()
      return mr.log():find(mod .. ".lua:1: ", 1, true) ~= nil
    end, 5), mr.log())
    assert.truthy(mr.log():find("reload refused", 1, true))
    assert.equal("v3", get())
    write_by_rename(mod_path, handler("v5"))
    assert.truthy(helpers.eventually(function() return get() == "v5" end, 5), mr.log())
  end)

  it("reloads when the config file itself changes, and coalesces a burst of writes", function()
    local log0 = #mr.log()
    for i = 1, 5 do
      write(mr.conf_path, config(('{ path = "/extra", handler = function() return 200, "x%d" end },'):format(i)))
    end
    assert.truthy(helpers.eventually(function() return get("/extra") == "x5" end, 5), mr.log())
    helpers.sleep(0.5)
    local _, reloads = mr.log():sub(log0):gsub("serving in every worker", "")
    -- Five writes within a few ms: debounced into one reload (two if a write straddled the delay).
    assert.is_true(reloads >= 1 and reloads <= 2, mr.log():sub(log0))
  end)

  it("also follows a module a handler required at request time", function()
    -- Each worker requires it on its first /lazy request; a handful of requests reach both.
    for _ = 1, 8 do assert.equal("lazy1", get("/lazy")) end
    assert.truthy(helpers.eventually(function()
      return mr.log():find("also watching " .. lazy_path, 1, true) ~= nil
    end, 5), mr.log())
    write(lazy_path, 'return "lazy2"\n')
    -- Only a reload (a new VM) can drop the cached module.
    assert.truthy(helpers.eventually(function() return get("/lazy") == "lazy2" end, 5), mr.log())
  end)

  it("ignores changes to files it did not load", function()
    local log0 = #mr.log()
    local other = helpers.tmp .. "/mrwatch-other" .. port .. ".lua"
    write(other, "return 1\n")
    helpers.sleep(0.6)
    os.remove(other)
    assert.is_nil(mr.log():sub(log0):find("changed", 1, true))
  end)
end)
