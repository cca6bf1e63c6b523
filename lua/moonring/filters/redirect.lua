-- redirect: answers with a redirect whose Location is built from a template.
--
--   { "moonring.filters.redirect", { to = "https://example.com$request_uri", status = 301 } }
--   { "moonring.filters.redirect", { https = true } }   -- http → https, same host and URI
--
-- Template variables: $path, $query (without '?'), $is_args ('?' when the query is not
-- empty), $request_uri ($path$is_args$query), $host, $scheme; ${name} also works and $$ is a
-- literal '$'. With `https = true` only requests whose scheme is not https are redirected, and
-- `to` defaults to "https://$host$request_uri".
local util = require "moonring.filters._util"

local NAME = "moonring.filters.redirect"
local concat = table.concat
local find, sub = string.find, string.sub

local STATUSES = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
local VARS = { path = true, query = true, is_args = true, request_uri = true, host = true, scheme = true }

-- "https://$host$path" → parts { "https://", "host", "path" }, vars { false, true, true }.
local function compile(to)
  local parts, vars, i, lit = {}, {}, 1, {}
  local function flush()
    if #lit > 0 then parts[#parts + 1] = concat(lit); vars[#parts] = false; lit = {} end
  end
  while i <= #to do
    local d = find(to, "$", i, true)
    if not d then lit[#lit + 1] = sub(to, i); break end
    lit[#lit + 1] = sub(to, i, d - 1)
    local name, j
    if sub(to, d + 1, d + 1) == "$" then
      lit[#lit + 1] = "$"
      i = d + 2
    else
      name, j = to:match("^{([%a_]+)}()", d + 1)
      if not name then name, j = to:match("^([%a_]+)()", d + 1) end
      if not name or not VARS[name] then
        util.fail(NAME, "to", "has unknown variable $" .. (name or sub(to, d + 1, d + 8)) ..
          " (known: $path, $query, $is_args, $request_uri, $host, $scheme)")
      end
      flush()
      parts[#parts + 1] = name
      vars[#parts] = true
      i = j
    end
  end
  flush()
  return parts, vars
end

local values = {}
local buf = {}

local function render(parts, vars, req)
  local query = req.query or ""
  values.path = req.path
  values.query = query
  values.is_args = query ~= "" and "?" or ""
  values.request_uri = query ~= "" and (req.path .. "?" .. query) or req.path
  values.host = req.host or ""
  values.scheme = req.scheme or "http"
  for i = 1, #parts do
    local p = parts[i]
    buf[i] = vars[i] and values[p] or p
  end
  return concat(buf, "", 1, #parts)
end

return function(opts)
  opts = util.options(NAME, opts, { "to", "status", "https" })
  local https = util.check_type(NAME, "https", opts.https, "boolean", true) or false
  local to = util.check_type(NAME, "to", opts.to, "string", https)
  if to == nil then to = "https://$host$request_uri" end
  if to == "" then util.fail(NAME, "to", "must not be empty") end
  if find(to, "[%z\r\n]") then util.fail(NAME, "to", "must not contain CR, LF or NUL") end
  local status = util.check_status(NAME, "status", opts.status, 302, STATUSES)
  local parts, vars = compile(to)
  local headers = { Location = "" } -- reused: respond() copies the headers out

  return {
    on_request = function(req)
      if https and req.scheme == "https" then return end
      headers.Location = render(parts, vars, req)
      req:respond(status, "", headers)
    end,
  }
end
