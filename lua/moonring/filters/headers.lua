-- headers: static request/response header edits.
--
--   { "moonring.filters.headers", {
--       request  = { set = { ["X-Env"] = "prod" }, add = { Via = "edge" }, remove = { "Cookie" } },
--       response = { set = { ["Cache-Control"] = "no-store" }, remove = { "Server" } },
--   } }
--
-- Per side, `remove` runs first, then `set` (replaces every value), then `add` (appends).
-- Values are strings, numbers, or (for `add`) lists of strings.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.headers"

-- Compiles { set = {}, add = {}, remove = {} } into three flat arrays.
local function compile(side, spec)
  if spec == nil then return nil end
  if type(spec) ~= "table" then util.fail(NAME, side, "must be a table, got " .. util.describe(spec)) end
  util.options(NAME .. ": option '" .. side .. "'", spec, { "set", "add", "remove" })
  local ops = { remove = {}, set_n = {}, set_v = {}, add_n = {}, add_v = {} }
  for _, name in ipairs(util.check_list(NAME, side .. ".remove", spec.remove, {})) do
    ops.remove[#ops.remove + 1] = util.check_header_name(NAME, side .. ".remove", name)
  end
  for _, kind in ipairs({ "set", "add" }) do
    local map = spec[kind]
    if map ~= nil then
      local opt = side .. "." .. kind
      if type(map) ~= "table" then util.fail(NAME, opt, "must be a map of header name to value") end
      local names = {}
      for k in pairs(map) do names[#names + 1] = k end
      table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
      for _, k in ipairs(names) do
        local o = opt .. "." .. tostring(k)
        util.check_header_name(NAME, o, k)
        local v = map[k]
        local values = (type(v) == "table" and kind == "add") and v or { v }
        if #values == 0 then util.fail(NAME, o, "must not be an empty list") end
        for _, one in ipairs(values) do
          ops[kind .. "_n"][#ops[kind .. "_n"] + 1] = k
          ops[kind .. "_v"][#ops[kind .. "_v"] + 1] = util.check_header_value(NAME, o, one)
        end
      end
    end
  end
  if #ops.remove + #ops.set_n + #ops.add_n == 0 then return nil end
  return ops
end

local function apply(ops, r)
  local remove, set_n, set_v, add_n, add_v = ops.remove, ops.set_n, ops.set_v, ops.add_n, ops.add_v
  for i = 1, #remove do r:del_header(remove[i]) end
  for i = 1, #set_n do r:set_header(set_n[i], set_v[i]) end
  for i = 1, #add_n do r:add_header(add_n[i], add_v[i]) end
end

return function(opts)
  opts = util.options(NAME, opts, { "request", "response" })
  local req_ops = compile("request", opts.request)
  local res_ops = compile("response", opts.response)
  local filter = {}
  if req_ops then
    function filter.on_request(req) apply(req_ops, req) end
  end
  if res_ops then
    function filter.on_response(res) apply(res_ops, res) end
  end
  return filter
end
