-- cors: Cross-Origin Resource Sharing.
--
--   { "moonring.filters.cors", {
--       origins = { "https://app.example.com", "https://*.example.org" },  -- or { "*" }
--       methods = { "GET", "POST" }, headers = { "Content-Type", "Authorization" },
--       expose = { "X-Request-Id" }, credentials = true, max_age = 600,
--   } }
--
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here with
-- 204 and the Access-Control-Allow-* headers (403 if the origin is not allowed); it never
-- reaches the upstream. Other requests from an allowed origin get Access-Control-Allow-Origin
-- (plus -Credentials and -Expose-Headers) on the response. Unless origins is exactly { "*" }
-- without credentials, every response also gets `Vary: Origin`, so caches keep per-origin
-- copies. With credentials, "*" reflects the request's Origin (browsers reject "*" there).
-- Without `headers`, a preflight's Access-Control-Request-Headers is echoed back.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.cors"
local concat = table.concat
local find, lower, sub = string.find, string.lower, string.sub

local DEFAULT_METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" }

local function compile_origins(list)
  local any, exact, wild = false, {}, {}
  for i, o in ipairs(list) do
    local opt = "origins[" .. i .. "]"
    if o == "*" then
      any = true
    elseif o == "null" then
      exact.null = true
    else
      local scheme, host = o:match("^([%a][%w+.-]*)://([^/%s]+)$")
      if not scheme then
        util.fail(NAME, opt, 'must be "*" or an origin like "https://example.com" (no path), got ' .. util.describe(o))
      end
      if sub(host, 1, 2) == "*." then
        wild[#wild + 1] = { lower(scheme) .. "://", lower(sub(host, 2)) } -- prefix, ".example.org[:port]"
      elseif find(host, "*", 1, true) then
        util.fail(NAME, opt, "may only use '*' as the first label (https://*.example.com)")
      else
        exact[lower(o)] = true
      end
    end
  end
  if #list == 0 then util.fail(NAME, "origins", "must not be empty") end
  return any, exact, wild
end

local function joined(opt, v, default, check)
  local list = util.check_list(NAME, opt, v, default)
  if list == nil then return nil end
  for i, s in ipairs(list) do
    if check == "method" then
      if not find(s, "^[!#$%%&'*+%-.^_`|~%w]+$") then util.fail(NAME, opt .. "[" .. i .. "]", "is not a method") end
    else
      util.check_header_name(NAME, opt .. "[" .. i .. "]", s)
    end
  end
  if #list == 0 then return nil end
  return concat(list, ", ")
end

return function(opts)
  opts = util.options(NAME, opts, { "origins", "methods", "headers", "expose", "credentials", "max_age" })
  local any, exact, wild = compile_origins(util.check_list(NAME, "origins", opts.origins, { "*" }))
  local methods = joined("methods", opts.methods, DEFAULT_METHODS, "method") or "GET"
  local allow_headers = joined("headers", opts.headers, nil)
  local expose = joined("expose", opts.expose, nil)
  local credentials = util.check_type(NAME, "credentials", opts.credentials, "boolean", true) or false
  local max_age = opts.max_age
  if max_age ~= nil and (type(max_age) ~= "number" or max_age < 0 or max_age ~= math.floor(max_age)) then
    util.fail(NAME, "max_age", "must be an integer number of seconds >= 0, got " .. util.describe(max_age))
  end
  local star = any and not credentials -- answer "*" and never vary on Origin
  local nwild = #wild

  -- The Access-Control-Allow-Origin value for `origin`, or nil if it is not allowed.
  local function allow(origin)
    if star then return "*" end
    if any then return origin end
    local o = lower(origin)
    if exact[o] then return origin end
    for i = 1, nwild do
      local w = wild[i]
      local p, s = w[1], w[2]
      if #o > #p + #s and sub(o, 1, #p) == p and sub(o, -#s) == s
        and not find(sub(o, #p + 1, -#s - 1), "[^%w.-]") then
        return origin
      end
    end
    return nil
  end

  local pre = { -- preflight answer, reused (respond copies headers)
    ["Access-Control-Allow-Methods"] = methods,
    ["Access-Control-Allow-Headers"] = allow_headers,
    ["Access-Control-Max-Age"] = max_age and tostring(max_age) or nil,
    ["Access-Control-Allow-Credentials"] = credentials and "true" or nil,
  }
  local vary_pre = star and (allow_headers == nil and "Access-Control-Request-Headers" or nil)
    or (allow_headers == nil and "Origin, Access-Control-Request-Headers" or "Origin")
  pre.Vary = vary_pre
  local denied = { Vary = "Origin", ["Content-Type"] = "text/plain; charset=utf-8" }

  local filter = {}

  function filter.on_request(req, ctx)
    local origin = req:header("origin")
    if not origin then return end
    local allowed = allow(origin)
    if req.method == "OPTIONS" and req:header("access-control-request-method") then
      if not allowed then
        req:respond(403, "CORS origin not allowed\n", denied)
        return
      end
      pre["Access-Control-Allow-Origin"] = allowed
      if not allow_headers then pre["Access-Control-Allow-Headers"] = req:header("access-control-request-headers") end
      req:respond(204, "", pre)
      return
    end
    ctx.cors_origin = allowed
  end

  function filter.on_response(res, ctx)
    if not star then
      local v = res:header("vary")
      if not (v and (v == "*" or find(lower(v), "origin", 1, true))) then res:add_header("Vary", "Origin") end
    end
    local o = ctx.cors_origin
    if not o then return end
    res:set_header("Access-Control-Allow-Origin", o)
    if credentials then res:set_header("Access-Control-Allow-Credentials", "true") end
    if expose then res:set_header("Access-Control-Expose-Headers", expose) end
  end

  return filter
end
