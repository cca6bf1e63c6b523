-- moonring.base mirrors the C side's FFI code set (src/util/export.h) and phase protocol
-- (src/lua/lua.h) exactly, and Lua modules name codes instead of spelling their values.
local helpers = require "helpers"
local base = require "moonring.base"

local function read(rel) return assert(helpers.read_file(helpers.root .. "/" .. rel), rel) end

describe("moonring.base", function()
  it("has every MR_FFI_* code of src/util/export.h with the same value, and no other", function()
    local c = {}
    for name, v in read("src/util/export.h"):gmatch("#define MR_FFI_([%w_]+)%s+(%-?%d+)") do
      c[name] = tonumber(v)
    end
    assert.is_not_nil(c.OK)
    local lua = {}
    for k, v in pairs(base) do
      if type(v) == "number" and k:match("^[%u_]+$") and not k:match("^RUN_") then lua[k] = v end
    end
    assert.same(c, lua)
  end)

  it("has distinct codes: OK is 0, every failure is negative", function()
    local seen = {}
    for k, v in pairs(base) do
      if type(v) == "number" and not k:match("^RUN_") then
        assert.is_nil(seen[v], k .. " and " .. tostring(seen[v]) .. " share " .. v)
        seen[v] = k
        if k ~= "OK" then assert.is_true(v < 0, k) end
      end
    end
    assert.equal(0, base.OK)
  end)

  it("mirrors the phase protocol of src/lua/lua.h", function()
    local h = read("src/lua/lua.h")
    assert.equal(tonumber(h:match("MR_LUA_DONE%s*=%s*(%-?%d+)")), base.RUN_DONE)
    assert.equal(tonumber(h:match("MR_LUA_YIELD%s*=%s*(%-?%d+)")), base.RUN_YIELD)
    assert.equal(tonumber(h:match("MR_LUA_RESPONDED%s*=%s*(%-?%d+)")), base.RUN_RESPONDED)
  end)

  it("words failures as OpenResty does", function()
    assert.equal("timeout", base.errstr(base.TIMEOUT))
    assert.equal("closed", base.errstr(base.CLOSED))
    assert.equal("connection refused", base.errstr(base.REFUSED))
    assert.equal("connection reset by peer", base.errstr(base.RESET))
    assert.equal("no memory", base.errstr(base.NOMEM))
    assert.equal("not found", base.errstr(base.DECLINED))
    assert.equal("exists", base.errstr(base.EXISTS))
    assert.is_nil(base.errstr(base.OK))
    assert.is_nil(base.errstr(base.AGAIN))
  end)

  it("is the only place in lua/moonring that spells a negative return code", function()
    local offenders = {}
    local p = io.popen("cd " .. helpers.shell_quote(helpers.root) .. " && find lua -name '*.lua' | sort")
    for f in p:lines() do
      if f ~= "lua/moonring/base.lua" then
        local n = 0
        for line in (read(f) .. "\n"):gmatch("([^\n]*)\n") do
          n = n + 1
          if line:match("[=~]=%s*%-%d") and not line:match("^%s*%-%-") then
            offenders[#offenders + 1] = f .. ":" .. n .. ": " .. line
          end
        end
      end
    end
    p:close()
    assert.same({}, offenders)
  end)
end)
