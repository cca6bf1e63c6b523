-- Filter entries and route patterns are checked when the config loads (moonring -t, start and
-- reload all go through moonring.config.load), with file:line: key and "did you mean".
local config = require "moonring.config"

local dir -- a fresh directory per run: configs and filter modules next to them
local seq = 0

setup(function()
  dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
end)

teardown(function()
  os.execute("rm -rf '" .. dir .. "'")
end)

local function write(name, src)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(src)
  f:close()
  return dir .. "/" .. name
end

-- A config whose one route has `filters` (Lua source); line 4 holds the route.
local function conf(filters, extra)
  seq = seq + 1
  return write("c" .. seq .. ".lua", "return {\n" ..
    '  listen = { "127.0.0.1:8080" },\n' ..
    "  routes = {\n" ..
    '    { path = "/", handler = function() return 200 end, filters = ' .. filters .. " },\n" ..
    "  },\n" .. (extra or "") .. "}\n")
end

local function load(filters, extra)
  local path = conf(filters, extra)
  local cfg, err = config.load(path)
  if err then
    assert.is_nil(err:find("\n"), "error must be one line: " .. err)
    err = err:gsub(path:gsub("%p", "%%%0"), "CFG")
  end
  return cfg, err
end

local function refused(filters, extra)
  local cfg, err = load(filters, extra)
  assert.is_nil(cfg, "expected a refusal")
  return err
end

describe("filter entries", function()
  describe("inline tables", function()
    it("refuse a misspelt phase with a hint, naming file, line and key", function()
      assert.equal("CFG:4: routes[1].filters[1].on_reqest: unknown filter phase 'on_reqest' (did you mean 'on_request'?)",
        refused("{ { on_reqest = function() end } }"))
      assert.equal("CFG:4: routes[1].filters[2].onrequest: unknown filter phase 'onrequest' (did you mean 'on_request'?)",
        refused("{ { on_log = print }, { onrequest = function() end } }"))
      assert.matches("routes[1].filters[1].on_Response: unknown filter phase 'on_Response' (did you mean 'on_response'?)",
        refused("{ { on_Response = print } }"), 1, true)
    end)

    it("refuse any other key, and a table without a phase", function()
      assert.equal("CFG:4: routes[1].filters[1].name: unknown filter phase 'name' (phases: on_request, on_response, on_body, on_log)",
        refused('{ { name = "x", on_request = print } }'))
      assert.equal("CFG:4: routes[1].filters[1]: a filter table needs at least one phase (on_request, on_response, on_body, on_log)",
        refused("{ {} }"))
    end)

    it("refuse a phase that is not a function", function()
      assert.equal('CFG:4: routes[1].filters[1].on_request: filter phase must be a function, got "auth"',
        refused('{ { on_request = "auth" } }'))
      assert.equal("CFG:4: routes[1].filters[1].on_body: filter phase must be a function, got table",
        refused("{ { on_body = {} } }"))
    end)

    it("accept every phase, and keep the table as written", function()
      local cfg = assert(load("{ { on_request = print, on_response = print, on_body = print, on_log = print } }"))
      local e = cfg.routes[1].chain[1]
      assert.is_nil(e.module)
      assert.equal(print, e.filter.on_request)
      assert.equal(print, e.filter.on_log)
    end)
  end)

  describe("unsupported forms", function()
    it("refuse { factory_function, options }", function()
      assert.matches('routes%[1%]%.filters%[1%]: { function, ... } is not a filter form: name the factory\'s module',
        refused("{ { function(o) return { on_request = print } end, { x = 1 } } }"))
    end)

    it("refuse a bare function, a number, a boolean and an empty name", function()
      assert.matches("routes[1].filters[1]: a function is not a filter: write { on_request = function(req, ctx) ... end }",
        refused("{ function(req) end }"), 1, true)
      assert.equal('CFG:4: routes[1].filters[1]: expected a module name, { "module", options } or a table of phase functions, got 42',
        refused("{ 42 }"))
      assert.matches('routes[1].filters[2]: expected a module name, { "module", options } or a table of phase functions, got true',
        refused('{ "moonring.filters.request_id", true }'), 1, true)
      assert.matches('routes[1].filters[1]: expected a module name, { "module", options } or a table of phase functions, got ""',
        refused('{ "" }'), 1, true)
      assert.matches('routes[1].filters: expected list of filters, got "moonring.filters.request_id"',
        refused('"moonring.filters.request_id"'), 1, true)
    end)

    it("refuse options that are not a table, and options given as named keys", function()
      assert.matches("routes[1].filters[1][2]: expected options table, got \"X-Id\"",
        refused('{ { "moonring.filters.request_id", "X-Id" } }'), 1, true)
      assert.matches([[routes[1].filters[1].header: unexpected key 'header' in { module, options }: options go in a table, { "moonring.filters.request_id", { header = ... } }]],
        refused('{ { "moonring.filters.request_id", header = "X-Id" } }'), 1, true)
      assert.matches("routes[1].filters[1]: { module, options } takes two items, got item [3]",
        refused('{ { "moonring.filters.request_id", {}, {} } }'), 1, true)
      assert.matches("routes[1].filters[1][1]: expected filter module name, got 7",
        refused('{ { 7, {} } }'), 1, true)
    end)
  end)

  describe("modules", function()
    it("load from the config's directory and through lua_path, relative to the config", function()
      write("mr_cfgf_near.lua", "return { on_request = function() end }\n")
      assert(os.execute("mkdir -p '" .. dir .. "/vendor'"))
      write("vendor/mr_cfgf_far.lua", "return function(o) return { on_log = function() end, opts = o } end\n")
      local cfg = assert(load('{ "mr_cfgf_near", { "mr_cfgf_far", { n = 1 } } }', 'lua_path = "vendor/?.lua",\n'))
      assert.equal("mr_cfgf_near", cfg.routes[1].chain[1].module)
      assert.same({ n = 1 }, cfg.routes[1].chain[2].filter.opts)
    end)

    it("call a factory with an empty table when no options are given", function()
      write("mr_cfgf_fac.lua", "return function(o) return { on_log = function() end, got = o } end\n")
      local cfg = assert(load('{ "mr_cfgf_fac" }'))
      assert.same({}, cfg.routes[1].chain[1].filter.got)
    end)

    it("refuse a module that does not exist, in one line, with a hint for stock filters", function()
      assert.equal("CFG:4: routes[1].filters[1]: filter module 'no.such.module' not found (searched the config's directory, lua_path and moonring's lua/)",
        refused('{ "no.such.module" }'))
      assert.matches("filter module 'moonring.filters.cros' not found (searched the config's directory, lua_path and moonring's lua/) (did you mean 'moonring.filters.cors'?)",
        refused('{ { "moonring.filters.cros", {} } }'), 1, true)
    end)

    it("refuse a module that does not compile or fails to run, with its own position", function()
      write("mr_cfgf_syntax.lua", "return { on_request = function( end }\n")
      assert.matches("^CFG:4: routes%[1%]%.filters%[1%]: cannot load filter module 'mr_cfgf_syntax': .*mr_cfgf_syntax%.lua:1: ",
        refused('{ "mr_cfgf_syntax" }'))
      write("mr_cfgf_boom.lua", "local x = nil; return x.y\n")
      assert.matches("cannot load filter module 'mr_cfgf_boom': .*mr_cfgf_boom%.lua:1: attempt to index",
        refused('{ "mr_cfgf_boom" }'))
      write("mr_cfgf_needs.lua", "require 'mr_cfgf_missing_dep'; return {}\n")
      assert.matches("cannot load filter module 'mr_cfgf_needs': .*module 'mr_cfgf_missing_dep' not found",
        refused('{ "mr_cfgf_needs" }'))
    end)

    it("refuse a module that returns neither a filter table nor a factory", function()
      write("mr_cfgf_num.lua", "return 7\n")
      write("mr_cfgf_none.lua", "local x = 1\n")
      assert.matches("routes[1].filters[1]: module 'mr_cfgf_num' returned 7, not a filter table or a factory function",
        refused('{ "mr_cfgf_num" }'), 1, true)
      assert.matches("module 'mr_cfgf_none' returned true, not a filter table or a factory function",
        refused('{ "mr_cfgf_none" }'), 1, true)
    end)

    it("refuse a factory that returns something else than a filter table", function()
      write("mr_cfgf_nil.lua", "return function() end\n")
      assert.matches("routes[1].filters[1]: the factory in module 'mr_cfgf_nil' returned nil, not a filter table",
        refused('{ { "mr_cfgf_nil", {} } }'), 1, true)
    end)

    it("refuse options for a module that returns a table", function()
      write("mr_cfgf_tbl.lua", "return { on_request = function() end }\n")
      assert.matches("routes[1].filters[1][2]: module 'mr_cfgf_tbl' returns a filter table, not a factory, so it takes no options",
        refused('{ { "mr_cfgf_tbl", { x = 1 } } }'), 1, true)
    end)

    it("refuse a misspelt or non-function phase in a module's table, but allow helper fields", function()
      write("mr_cfgf_typo.lua", "return { on_reqest = function() end, VERSION = 1, new = print }\n")
      assert.matches("routes[1].filters[1].on_reqest: unknown filter phase 'on_reqest' (in module 'mr_cfgf_typo') (did you mean 'on_request'?)",
        refused('{ "mr_cfgf_typo" }'), 1, true)
      write("mr_cfgf_onx.lua", "return function() return { on_start = print } end\n")
      assert.matches("unknown filter phase 'on_start' (in module 'mr_cfgf_onx') (phases: on_request",
        refused('{ "mr_cfgf_onx" }'), 1, true)
      write("mr_cfgf_str.lua", "return { on_log = 'later' }\n")
      assert.matches("routes[1].filters[1].on_log: filter phase must be a function (in module 'mr_cfgf_str'), got \"later\"",
        refused('{ "mr_cfgf_str" }'), 1, true)
      write("mr_cfgf_helpers.lua", "return { on_log = print, VERSION = 1, new = print }\n")
      assert(load('{ "mr_cfgf_helpers" }'))
    end)
  end)

  describe("stock filters", function()
    it("check their options at load, with the line of the entry", function()
      assert.equal([[CFG:4: routes[1].filters[1]: moonring.filters.cors: unknown option 'origin' (did you mean 'origins'?)]],
        refused('{ { "moonring.filters.cors", { origin = "*" } } }'))
      assert.matches("routes[1].filters[1]: moonring.filters.rate_limit: option 'rate' is required",
        refused('{ { "moonring.filters.rate_limit", { dict = "d" } } }'), 1, true)
      assert.matches("routes[1].filters[2]: moonring.filters.redirect: option 'status' must be one of",
        refused('{ "moonring.filters.request_id", { "moonring.filters.redirect", { to = "/x", status = 200 } } }'),
        1, true)
      assert.matches("moonring.filters.rewrite: option 'from' is not a valid Lua pattern",
        refused('{ { "moonring.filters.rewrite", { from = "^/x%", to = "/y" } } }'), 1, true)
    end)

    it("are the modules of lua/moonring/filters (the list behind 'did you mean')", function()
      local here = debug.getinfo(1, "S").source:gsub("^@", ""):match("^(.*)/spec/unit/") or "."
      local p = io.popen("ls '" .. here .. "/lua/moonring/filters'")
      local found = {}
      for f in p:lines() do
        local m = f:match("^([%w_]+)%.lua$")
        if m and m:sub(1, 1) ~= "_" then found[#found + 1] = "moonring.filters." .. m end
      end
      p:close()
      table.sort(found)
      local listed = { unpack(config.STOCK_FILTERS) }
      table.sort(listed)
      assert.same(found, listed)
    end)
  end)
end)

describe("route patterns", function()
  local function route_conf(route)
    seq = seq + 1
    return write("r" .. seq .. ".lua", "return {\n" ..
      '  listen = { "127.0.0.1:8080" },\n' ..
      "  routes = {\n" ..
      "    " .. route .. ",\n" ..
      "  },\n}\n")
  end

  it("refuse a headers value with a malformed Lua pattern, with file, line and key", function()
    for pat, why in pairs({
      ["("] = "unfinished capture (missing ')')",
      ["^v%"] = "malformed pattern (ends with '%')",
      ["[a-z"] = "malformed pattern (missing ']')",
      ["[%]"] = "malformed pattern (missing ']')",
      ["(a))"] = "invalid pattern capture (')' without '(')",
      ["x%1"] = "invalid capture index %1 (no such closed capture)",
      ["(x%1)"] = "invalid capture index %1 (no such closed capture)",
      ["%0"] = "invalid capture index %0 (no such closed capture)",
      ["%b("] = "missing arguments to '%b' (write %bxy)",
      ["%fa"] = "missing '[' after '%f' in pattern",
      [("()"):rep(33)] = "too many captures (at most 32)",
    }) do
      local path = route_conf(('{ headers = { ["X-V"] = %q }, handler = print }'):format("~" .. pat))
      local cfg, err = config.load(path)
      assert.is_nil(cfg, pat)
      local shown = pat
      if #shown > 60 then shown = shown:sub(1, 57) .. "..." end
      assert.equal(path .. ':4: routes[1].headers["X-V"]: bad Lua pattern "' .. shown .. '": ' .. why, err)
    end
  end)

  it("accept well-formed patterns, and exact values with any characters", function()
    for _, pat in ipairs({ "^v%d+$", "[]]", "[^%]]", "%bxy", "%f[%w]%w+", "(a)%1", "()", "(()a)%2", "a)", "$a",
      "[a-]", "%%", "^$", "a-b*c+d?", "[%a_][%w_]*" }) do
      local path = route_conf(('{ headers = { ["X-V"] = %q, ["X-E"] = "(" }, handler = print }'):format("~" .. pat))
      local cfg, err = config.load(path)
      assert(cfg, err)
    end
  end)

  -- The property that matters: whatever the check lets through, string.find never raises on.
  it("never lets through a pattern that string.find or gsub raises on (random patterns)", function()
    local alphabet = { "(", ")", "%", "[", "]", "^", "$", "a", "b", "1", "2", "0", "-", "*", "?", "+", ".", "f", "x" }
    local subjects = { "", "a", "ab", "aab(b)", "ba1", "[x]%", "ffab2", "aaaaaaaaaa", "(((a)))", "a-b*c" }
    math.randomseed(12345)
    local passed, refused_n = 0, 0
    for _ = 1, 20000 do
      local t = {}
      for k = 1, math.random(1, 7) do t[k] = alphabet[math.random(#alphabet)] end
      local pat = table.concat(t)
      if config.lua_pattern_error(pat, true) == nil then
        passed = passed + 1
        for _, s in ipairs(subjects) do
          local ok, e = pcall(string.find, s, pat)
          assert(ok, ("pattern %q passed the check but find(%q) raised: %s"):format(pat, s, tostring(e)))
        end
      else
        refused_n = refused_n + 1
      end
      -- without the plain-search shortcut (gsub, as the rewrite filter uses it)
      if config.lua_pattern_error(pat) == nil then
        for _, s in ipairs(subjects) do
          local ok, e = pcall(string.gsub, s, pat, "%0")
          assert(ok, ("pattern %q passed the check but gsub(%q) raised: %s"):format(pat, s, tostring(e)))
        end
      end
    end
    assert.is_true(passed > 1000 and refused_n > 1000)
  end)

  it("refuse an invalid LPeg pattern (the `pattern` key), as before", function()
    local path = route_conf('{ pattern = "\'/u/\' {:id: %d+ :", handler = print }')
    local cfg, err = config.load(path)
    assert.is_nil(cfg)
    assert.matches(":4: routes[1].pattern: bad pattern", err, 1, true)
  end)
end)
