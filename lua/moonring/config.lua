-- Loads a moonring config file (a Lua chunk returning a table), validates it
-- against a declarative schema and returns a normalised table for the C core.
--
-- The C core only ever sees the normalised form: every default filled in,
-- durations in integer milliseconds, sizes in integer bytes, maps turned into
-- sorted lists, cross-references resolved to indexes. That keeps all policy
-- about user-facing syntax here, in one place, and the C side dumb.

local M = {}

local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort
local fmt = string.format

---------------------------------------------------------------------------
-- Error plumbing
---------------------------------------------------------------------------

-- Validation errors unwind with a table so the top level can attach a source
-- line once, instead of every check having to know about files.
--   path: key path shown in the message
--   at:   key path used to find the source line (defaults to path)
local function fail(path, msg, at)
  error({ path = path, msg = msg, at = at }, 0)
end

local function quote(s)
  -- %q would keep raw newlines (as "\<newline>"); messages must stay on one line.
  s = s:gsub('[%c"\\]', function(c)
    local named = { ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ['"'] = '\\"', ["\\"] = "\\\\" }
    return named[c] or fmt("\\%d", c:byte())
  end)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return '"' .. s .. '"'
end

-- How a bad value is shown after "got".
local function describe(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  return t
end

local function is_ident(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local function fmt_path(path)
  local buf = {}
  for i, k in ipairs(path) do
    if type(k) == "number" then
      buf[#buf + 1] = "[" .. k .. "]"
    elseif is_ident(k) then
      buf[#buf + 1] = (i > 1 and "." or "") .. k
    else
      buf[#buf + 1] = "[" .. quote(tostring(k)) .. "]"
    end
  end
  return concat(buf)
end

-- Paths are shared between sibling checks, so extending one must copy.
local function join(path, k)
  local p = { unpack(path) }
  p[#p + 1] = k
  return p
end

local function expected(path, what, v)
  fail(path, "expected " .. what .. ", got " .. describe(v))
end

local function levenshtein(a, b)
  if a == b then return 0 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    local ca = a:byte(i)
    for j = 1, #b do
      local cost = (ca == b:byte(j)) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- Closest candidate to a misspelt name, or nil when nothing is plausibly meant.
local function suggest(name, candidates)
  local lname = name:lower()
  local limit = math.max(1, floor(#name / 3))
  local best, bestd
  for _, c in ipairs(candidates) do
    local d = levenshtein(lname, c:lower())
    if d <= limit and (not bestd or d < bestd or (d == bestd and c < best)) then
      best, bestd = c, d
    end
  end
  return best
end

local function did_you_mean(name, candidates)
  local s = suggest(name, candidates)
  return s and (" (did you mean '" .. s .. "'?)") or ""
end

---------------------------------------------------------------------------
-- Value parsers
---------------------------------------------------------------------------

local function finite(v)
  return type(v) == "number" and v == v and v ~= huge and v ~= -huge
end

local function is_int(v)
  return finite(v) and v == floor(v)
end

local DURATION_UNITS = { ms = 1, s = 1000, m = 60 * 1000, h = 3600 * 1000 }
local DURATION_WHAT = 'duration (seconds, or a string like "500ms", "10s", "2m", "1h")'

-- Returns integer milliseconds or nil.
local function parse_duration(v)
  local n, scale
  if type(v) == "number" then
    n, scale = v, 1000
  elseif type(v) == "string" then
    local num, unit = v:match("^(%d*%.?%d+)(%a+)$")
    n, scale = tonumber(num), DURATION_UNITS[unit or ""]
    if not scale then return nil end
  end
  if not finite(n) or n < 0 then return nil end
  -- The epsilon keeps 1.005 s from flooring to 1004 ms through binary rounding.
  return floor(n * scale + 1e-6)
end

local SIZE_UNITS = { [""] = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 }
local SIZE_WHAT = 'size (bytes, or a string like "512", "16k", "1m", "1g")'

-- Returns integer bytes or nil.
local function parse_size(v)
  if type(v) == "number" then
    return (is_int(v) and v >= 0) and v or nil
  elseif type(v) == "string" then
    local num, unit = v:match("^(%d+)([kKmMgG]?)$")
    if num then return tonumber(num) * SIZE_UNITS[unit:lower()] end
  end
  return nil
end

local function valid_hostname(h)
  if #h == 0 or #h > 253 then return false end
  for label in (h .. "."):gmatch("([^.]*)%.") do
    if not label:match("^[%w_][%w_%-]*$") then return false end
  end
  return true
end

-- "host:port" -> { addr, host, port } with a canonical addr, or nil, reason.
-- wildcard: allow "*" (listeners only; it is meaningless as a connect target).
local function parse_addr(s, wildcard)
  if type(s) ~= "string" then return nil end
  local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
  local v6 = host ~= nil
  if v6 then
    if not host:find(":", 1, true) then return nil end
  else
    host, port = s:match("^([^:%[%]]+):(%d+)$")
    if not host then return nil end
    if host == "*" then
      if not wildcard then return nil end
      host = "0.0.0.0"
    elseif host:match("^[%d.]+$") then
      local quad = { host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
      if #quad ~= 4 then return nil end
      for _, o in ipairs(quad) do
        if tonumber(o) > 255 then return nil end
      end
    elseif not valid_hostname(host) then
      return nil
    end
  end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, "port" end
  local addr = (v6 and ("[" .. host .. "]") or host) .. ":" .. port
  return { addr = addr, host = host, port = port }
end

---------------------------------------------------------------------------
-- Schema combinators
--
-- A spec is a function(value, path, ctx) -> normalised value that calls fail()
-- on bad input. `ctx` carries state needed for cross-references (e.g. the
-- upstream names routes may point at).
---------------------------------------------------------------------------

local S = {}

function S.int(min, max)
  local what = max and fmt("integer %d..%d", min, max) or fmt("integer >= %d", min)
  return function(v, path)
    if not is_int(v) or v < min or (max and v > max) then expected(path, what, v) end
    return v
  end
end

function S.bool(v, path)
  if type(v) ~= "boolean" then expected(path, "boolean", v) end
  return v
end

function S.func(v, path)
  if type(v) ~= "function" then expected(path, "function", v) end
  return v
end

-- Passed through unvalidated (reserved keys such as tls).
function S.table(v, path)
  if type(v) ~= "table" then expected(path, "table", v) end
  return v
end

function S.string(v, path)
  if type(v) ~= "string" or v == "" then expected(path, "non-empty string", v) end
  return v
end

function S.string_or_false(v, path)
  if v == false then return false end
  if type(v) ~= "string" or v == "" then expected(path, "non-empty string or false", v) end
  return v
end

function S.enum(...)
  local allowed, shown = {}, {}
  for i, a in ipairs({ ... }) do
    allowed[a] = true
    shown[i] = quote(a)
  end
  local what = "one of " .. concat(shown, ", ")
  return function(v, path)
    if not allowed[v] then expected(path, what, v) end
    return v
  end
end

-- min_ms lets I/O timeouts refuse 0, which would make every operation time out.
function S.duration(min_ms)
  min_ms = min_ms or 0
  return function(v, path)
    local ms = parse_duration(v)
    if not ms then expected(path, DURATION_WHAT, v) end
    if ms < min_ms then expected(path, fmt("duration of at least %dms", min_ms), v) end
    return ms
  end
end

function S.size(min, max)
  min = min or 0
  return function(v, path)
    local n = parse_size(v)
    if not n then expected(path, SIZE_WHAT, v) end
    if n < min then expected(path, fmt("size of at least %d bytes", min), v) end
    if max and n > max then expected(path, fmt("size of at most %d bytes", max), v) end
    return n
  end
end

function S.addr(wildcard)
  return function(v, path)
    local a, why = parse_addr(v, wildcard)
    if why == "port" then fail(path, "port must be 1-65535, got " .. describe(v)) end
    if not a then expected(path, '"host:port"', v) end
    return a
  end
end

function S.either(a, b)
  return function(v, path, ctx)
    if type(v) == "table" then return b(v, path, ctx) end
    return a(v, path, ctx)
  end
end

-- Lists must be proper sequences: a hole or a stray named key is almost
-- always a typo (e.g. `listen = { addr = ... }` instead of a list of them).
local function check_sequence(v, path, what)
  if type(v) ~= "table" then expected(path, what, v) end
  local n = 0
  for k in pairs(v) do
    if type(k) ~= "number" then
      fail(path, "unexpected key '" .. tostring(k) .. "' in " .. what, join(path, tostring(k)))
    end
    n = n + 1
  end
  for i = 1, n do
    if v[i] == nil then fail(path, what .. " has a hole at [" .. i .. "]") end
  end
  return n
end

-- opts: min (minimum length), what (description), one (also accept a single
-- item, as a shorthand), finish(out, path, ctx).
function S.list(item, opts)
  opts = opts or {}
  local what = opts.what or "list"
  return function(v, path, ctx)
    -- A lone item is reported under the key itself, as the user wrote it.
    if opts.one and type(v) ~= "table" then return { item(v, path, ctx) } end
    local n = check_sequence(v, path, what)
    if n < (opts.min or 0) then fail(path, "must not be empty") end
    local out = {}
    for i = 1, n do out[i] = item(v[i], join(path, i), ctx) end
    if opts.finish then out = opts.finish(out, path, ctx) or out end
    return out
  end
end

-- Maps with string keys matching keypat; finish turns the result into
-- whatever shape the C side wants.
function S.map(keypat, keywhat, val, finish)
  return function(v, path, ctx)
    if type(v) ~= "table" then expected(path, "table", v) end
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" or not k:match(keypat) then
        fail(path, "invalid name " .. describe(k) .. " (" .. keywhat .. ")",
          type(k) == "string" and join(path, k) or path)
      end
      keys[#keys + 1] = k
    end
    sort(keys)
    local out = {}
    for _, k in ipairs(keys) do out[k] = val(v[k], join(path, k), ctx) end
    if finish then out = finish(out, keys, path, ctx) or out end
    return out
  end
end

-- fields: list of { name, spec, default = user-form value, out = output key,
-- required = bool }. Defaults go through the spec like user input, so they are
-- written the way users write them and are validated by the same code.
function S.record(fields, finish)
  local names = {}
  for i, f in ipairs(fields) do names[i] = f[1] end
  return function(v, path, ctx)
    if type(v) ~= "table" then expected(path, "table", v) end
    local unknown = {}
    for k in pairs(v) do
      if type(k) ~= "string" then
        fail(path, "unexpected list item [" .. tostring(k) .. "] (expected named keys)")
      end
      local known = false
      for _, n in ipairs(names) do
        if n == k then known = true break end
      end
      if not known then unknown[#unknown + 1] = k end
    end
    if #unknown > 0 then
      sort(unknown)  -- deterministic: always report the same one first
      local k = unknown[1]
      fail(path, "unknown key '" .. k .. "'" .. did_you_mean(k, names), join(path, k))
    end
    local out = {}
    for _, f in ipairs(fields) do
      local name, x = f[1], v[f[1]]
      local p = join(path, name)
      if x == nil then
        if f.required then fail(p, "required but not set") end
        x = f.default
      end
      if x ~= nil then out[f.out or name] = f[2](x, p, ctx) end
    end
    if finish then out = finish(out, v, path, ctx) or out end
    return out
  end
end

---------------------------------------------------------------------------
-- The schema
---------------------------------------------------------------------------

local NAME_PAT, NAME_WHAT = "^[%w_.-]+$", "letters, digits, '_', '.', '-'"

local function workers(v, path)
  if v == "auto" then return 0 end
  if not is_int(v) or v < 1 then expected(path, 'integer >= 1 or "auto"', v) end
  return v
end

-- Paths. One rule for every key that names a file: a relative path is relative to the config
-- file's directory (ctx.dir, absolute), whatever the working directory of the process that
-- loads it (a systemd unit, `moonring -t` run from elsewhere). The normalised table holds
-- absolute paths only.
local function in_dir(v, ctx)
  if v:sub(1, 1) == "/" or not ctx.dir then return v end
  return (ctx.dir == "/" and "" or ctx.dir) .. "/" .. v
end

local function file_path(v, path, ctx)
  S.string(v, path)
  return in_dir(v, ctx)
end

-- pid = false | path
local function pid_path(v, path, ctx)
  if v == false then return false end
  if type(v) ~= "string" or v == "" then expected(path, "path or false", v) end
  return in_dir(v, ctx)
end

-- error_log = "stderr" | path
local function error_log_target(v, path, ctx)
  if type(v) ~= "string" or v == "" then expected(path, '"stderr" or a path', v) end
  if v == "stderr" then return v end
  return in_dir(v, ctx)
end

-- access_log = false | "stdout" | "stderr" | path
local function access_log_target(v, path, ctx)
  if v == false then return false end
  if type(v) ~= "string" or v == "" then expected(path, 'false, "stdout", "stderr" or a path', v) end
  if v == "stdout" or v == "stderr" then return v end
  return in_dir(v, ctx)
end

-- Access-log formats (log_formats) in nginx's style: text with $variables. The names match
-- src/log/logfmt.c, which compiles the chosen one; $http_NAME is any request header.
local LOG_VARS = {}
for v in ([[remote_addr remote_user time_local time_iso8601 msec request request_method request_uri uri
  args query_string server_protocol status body_bytes_sent bytes_sent request_length request_time
  upstream_addr upstream_status upstream_connect_time upstream_header_time upstream_response_time upstream
  route request_id host scheme ssl_protocol ssl_cipher ssl_session_reused ssl_server_name ssl_client_s_dn
  pid connection_addr]]):gmatch("%S+") do LOG_VARS[v] = true end

local function log_template(v, path)
  if type(v) ~= "string" or v == "" then expected(path, "format string", v) end
  if v:find("[\r\n]") then fail(path, "a format must be one line (the newline is added)") end
  for braced, name in v:gmatch("%$({?)([%w_]+)") do
    if not (LOG_VARS[name] or (name:match("^http_[%w_]+$"))) then
      fail(path, "unknown variable $" .. name .. " (see docs/config.md#log_formats)")
    end
  end
  for rest in v:gmatch("%${([^}]*)$") do fail(path, "unclosed ${" .. rest) end
  return v
end

local log_format = S.either(
  function(v, path) return { format = log_template(v, path), escape = "default" } end,
  S.record({
    { "format", log_template, required = true },
    { "escape", S.enum("default", "json", "none"), default = "default" },
  }))

local log_formats = S.map("^[%w_.-]+$", "letters, digits, '_', '.', '-'", log_format)

-- access_log = false | "stdout" | "stderr" | path | { path = ..., format = "name" }
local access_log_spec = S.either(access_log_target, S.record({
  { "path", access_log_target, required = true },
  { "format", S.string },
}, function(out) return { path = out.path, format = out.format } end))

-- real_ip = { from = { "10.0.0.0/8", "::1" }, header = "X-Forwarded-For", recursive = true }:
-- the client address behind trusted proxies (src/proxy/real_ip.c).
local function cidr(v, path)
  if type(v) ~= "string" then expected(path, '"address" or "address/bits"', v) end
  local addr, bits = v:match("^([^/]+)/(%d+)$")
  addr = addr or v
  local v4 = addr:match("^%d+%.%d+%.%d+%.%d+$")
  local v6 = not v4 and addr:match("^[%x:.]+$") and addr:find(":", 1, true)
  if not (v4 or v6) then expected(path, '"address" or "address/bits" (an IPv4 or IPv6 network)', v) end
  if v4 then
    for o in addr:gmatch("%d+") do
      if tonumber(o) > 255 then expected(path, "an IPv4 address", v) end
    end
  end
  bits = tonumber(bits) or (v4 and 32 or 128)
  if bits > (v4 and 32 or 128) then fail(path, "prefix length " .. bits .. " is too long for " .. addr) end
  return addr .. "/" .. bits
end

local real_ip = S.record({
  { "from", S.list(cidr, { one = true, min = 1, what = "list of trusted addresses or networks" }), required = true },
  { "header", S.string, default = "X-Forwarded-For" },
  { "recursive", S.bool, default = true },
}, function(out, raw, path)
  if not out.header:match("^[%w!#$%%&'*+.^_`|~-]+$") then fail(join(path, "header"), "invalid header name " .. quote(out.header)) end
  out.header = out.header:lower()
  return out
end)

-- user / group: the account to run as after binding (names or numeric ids).
local function account(v, path)
  if type(v) == "number" and v >= 0 and v % 1 == 0 then return tostring(v) end
  if type(v) ~= "string" or not v:match("^[%w_.-]+$") then expected(path, "user or group name, or a numeric id", v) end
  return v
end

-- lua_path: package.path templates; relative ones are made absolute like every other path.
-- The config's directory comes first. ctx.lua_path is what filter modules are loaded through.
local function search_path(v, path, ctx)
  if type(v) ~= "string" then expected(path, "package.path-style string", v) end
  local d = ctx.dir == "/" and "" or ctx.dir
  local out = { d .. "/?.lua", d .. "/?/init.lua" }
  for entry in v:gmatch("[^;]+") do
    if not entry:find("?", 1, true) then
      fail(path, "entry " .. quote(entry) .. " has no '?' (write templates like \"lib/?.lua\")")
    end
    out[#out + 1] = in_dir(entry, ctx)
  end
  ctx.lua_path = concat(out, ";") .. ";"
  return ctx.lua_path
end

-- TLS. Files are checked here (readable, named by key and file) so the common mistakes get a
-- source line; the C engine then checks their contents (PEM, key matches certificate) and its
-- messages get the line of the key they name (M.line_of).
local function readable_file(v, path, ctx)
  v = file_path(v, path, ctx)
  local f, err = io.open(v, "rb")
  -- a directory opens, but does not read
  if f then
    local data, rerr = f:read(1)
    f:close()
    if data == nil and rerr then f, err = nil, rerr end
  end
  if not f then
    fail(path, fmt("%s: cannot read (%s)", v, (tostring(err):gsub("^.-: ", ""))))
  end
  return v
end

local tls_protocols = S.list(S.enum("TLSv1.2", "TLSv1.3"), { one = true, min = 1, what = "list of protocols" })

local function protocol_range(out)
  local has = {}
  for _, p in ipairs(out.protocols) do has[p] = true end
  out.min_protocol = has["TLSv1.2"] and "TLSv1.2" or "TLSv1.3"
  out.max_protocol = has["TLSv1.3"] and "TLSv1.3" or "TLSv1.2"
end

local tls_cert = S.record({
  { "cert", readable_file, required = true },
  { "key", readable_file, required = true },
})

local listener_tls = S.record({
  { "certs", S.list(tls_cert, { min = 1, what = "list of certificates" }) },
  { "cert", readable_file },
  { "key", readable_file },
  { "protocols", tls_protocols, default = { "TLSv1.2", "TLSv1.3" } },
  { "ciphers", S.string },
  { "ciphersuites", S.string },
  -- Default: { "h2", "http/1.1" }, or { "http/1.1" } on a listener with http2 = false.
  { "alpn", S.list(S.enum("h2", "http/1.1"), { one = true, min = 1, what = "list of protocols" }) },
  { "client_verify", S.enum("none", "optional", "require"), default = "none" },
  { "client_ca", readable_file },
  { "verify_depth", S.int(1, 100) },
  { "session_cache", S.either(function(v, path)
      if v == false then return 0 end
      return S.size()(v, path)
    end, S.table), default = false },
  { "session_tickets", S.bool, default = true },
  { "ticket_rotation", S.duration(60000), default = "12h", out = "ticket_rotation_ms" },
}, function(out, raw, path)
  if out.cert or out.key then
    -- Shorthand for a single certificate.
    if out.certs then fail(join(path, "cert"), "set either 'certs' or 'cert' and 'key', not both") end
    if not out.cert then fail(join(path, "cert"), "required with 'key'") end
    if not out.key then fail(join(path, "key"), "required with 'cert'") end
    out.certs = { { cert = out.cert, key = out.key } }
    out.cert, out.key = nil, nil
  end
  if not out.certs then fail(join(path, "certs"), "required (or 'cert' and 'key')") end
  if type(out.session_cache) ~= "number" then expected(join(path, "session_cache"), "size or false", raw.session_cache) end
  if out.client_verify ~= "none" and not out.client_ca then
    fail(join(path, "client_ca"), "required when client_verify is " .. quote(out.client_verify))
  end
  protocol_range(out)
  out.where = fmt_path(path)
  return out
end)

-- HTTP/2 on a listener: on by default (TLS: ALPN "h2"; plain TCP: the client's connection preface
-- with prior knowledge), with its SETTINGS (docs/config.md, listen).
local http2_opts = S.record({
  { "max_concurrent_streams", S.int(1, 2147483647), default = 128 },
  { "initial_window", S.size(1, 2147483647), default = 65535 },
  { "connection_window", S.size(65535, 2147483647), default = "1m" },
  { "max_frame_size", S.size(16384, 16777215), default = "16k" },
  { "max_header_list_size", S.size(1024), default = "32k" },
})
local HTTP2_DEFAULTS = { max_concurrent_streams = 128, initial_window = 65535, connection_window = 1048576,
                         max_frame_size = 16384, max_header_list_size = 32768 }

local function http2_opt(v, path)
  if v == true or v == nil then return HTTP2_DEFAULTS end
  if v == false then return false end
  if type(v) ~= "table" then expected(path, "boolean or table", v) end
  return http2_opts(v, path)
end

local function listener_alpn(out, path)
  if out.tls then
    if not out.tls.alpn then
      out.tls.alpn = out.http2 and { "h2", "http/1.1" } or { "http/1.1" }
    elseif not out.http2 then
      for _, p in ipairs(out.tls.alpn) do
        if p == "h2" then fail(join(join(path, "tls"), "alpn"), '"h2" offered on a listener with http2 = false') end
      end
    end
  end
  return out
end

local listener = S.either(
  function(v, path)
    local a = S.addr(true)(v, path)
    return { addr = a.addr, host = a.host, port = a.port, backlog = 511, name = a.addr, http2 = HTTP2_DEFAULTS }
  end,
  S.record({
    { "addr", S.addr(true), required = true },
    { "backlog", S.int(1, 65535), default = 511 },
    { "name", S.string },
    { "tls", listener_tls },
    { "http2", http2_opt, default = true },
  }, function(out, raw, path)
    local a = out.addr
    return listener_alpn({ addr = a.addr, host = a.host, port = a.port, backlog = out.backlog,
             name = out.name or a.addr, tls = out.tls, http2 = out.http2 }, path)
  end))

local listen = S.list(listener, {
  min = 1,
  what = "list of addresses",
  finish = function(out, path, ctx)
    local seen = {}
    for i, l in ipairs(out) do
      if seen[l.addr] then
        fail(join(path, i), fmt("duplicate address %s (also listen[%d])", quote(l.addr), seen[l.addr]))
      end
      seen[l.addr] = i
    end
    ctx.listen_addrs = seen
  end,
})

-- "https://host:port" makes the upstream TLS; "http://" is accepted and means plain TCP.
local function server_addr(v, path)
  local scheme
  if type(v) == "string" then
    local sch, rest = v:match("^(%a+)://(.*)$")
    if sch then
      sch = sch:lower()
      if sch ~= "http" and sch ~= "https" then fail(path, "unsupported scheme " .. quote(sch) .. " (use http:// or https://)") end
      scheme, v = sch, rest
    end
  end
  local a = S.addr(false)(v, path)
  a.scheme = scheme
  return a
end

local server = S.either(
  function(v, path)
    local a = server_addr(v, path)
    a.weight = 1
    return a
  end,
  S.record({
    { "addr", server_addr, required = true },
    { "weight", S.int(1, 1000), default = 1 },
  }, function(out)
    local a = out.addr
    return { addr = a.addr, host = a.host, port = a.port, weight = out.weight, scheme = a.scheme }
  end))

local upstream_tls = S.record({
  { "verify", S.bool, default = true },
  { "ca", readable_file },
  { "sni", S.string_or_false },
  { "cert", readable_file },
  { "key", readable_file },
  { "protocols", tls_protocols, default = { "TLSv1.2", "TLSv1.3" } },
  { "ciphers", S.string },
  { "ciphersuites", S.string },
}, function(out, raw, path)
  if out.cert and not out.key then fail(join(path, "key"), "required with 'cert'") end
  if out.key and not out.cert then fail(join(path, "cert"), "required with 'key'") end
  protocol_range(out)
  out.where = fmt_path(path)
  return out
end)

local upstream = S.record({
  { "servers", S.list(server, { min = 1, what = "list of servers" }), required = true },
  { "balance", S.enum("round_robin", "least_conn"), default = "round_robin" },
  { "keepalive", S.int(0), default = 32 },
  { "keepalive_timeout", S.duration(), default = "60s", out = "keepalive_timeout_ms" },
  { "keepalive_requests", S.int(1), default = 1000 },
  { "connect_timeout", S.duration(1), default = "5s", out = "connect_timeout_ms" },
  { "read_timeout", S.duration(1), default = "60s", out = "read_timeout_ms" },
  { "send_timeout", S.duration(1), default = "60s", out = "send_timeout_ms" },
  { "tries", S.int(1), default = 3 },
  -- "http2": h2c with prior knowledge, or h2 by ALPN on TLS; "grpc": the same, and every request
  -- is treated as gRPC (errors answered as gRPC statuses).
  { "protocol", S.enum("http1", "http2", "grpc"), default = "http1" },
  { "tls", upstream_tls },
}, function(out, raw, path, ctx)
  local https, plain
  for i, sv in ipairs(out.servers) do
    if sv.scheme == "https" then https = https or i elseif sv.scheme == "http" then plain = plain or i end
  end
  if https and plain then
    fail(join(join(path, "servers"), plain), "mixes http:// and https:// servers (use one upstream for each)")
  end
  if out.tls and plain then
    fail(join(join(path, "servers"), plain), "is http:// but the upstream has 'tls' set")
  end
  if https and not out.tls then out.tls = upstream_tls({}, join(path, "tls"), ctx) end
  for _, sv in ipairs(out.servers) do
    sv.scheme = nil
    if out.tls then
      local t = out.tls
      sv.tls = true
      local sni = t.sni
      if sni == nil then sni = sv.host end
      sv.sni = sni or nil
      -- Pooled connections (and cached sessions) are shared only between upstreams that
      -- would have made the same connection: same address and same TLS settings.
      -- The ALPN offered (h2 or none) is part of the context, so the protocol is part of the key.
      sv.tls_key = concat({ tostring(t.verify), t.ca or "", sv.sni or "", t.cert or "", t.key or "",
                            t.min_protocol, t.max_protocol, t.ciphers or "", t.ciphersuites or "",
                            out.protocol == "http1" and "h1" or "h2" }, "\0")
    end
  end
  return out
end)

-- Sorted by name so upstream ids are stable across reloads of the same file.
local upstreams = S.map(NAME_PAT, NAME_WHAT, upstream, function(out, keys, path, ctx)
  local list, index = {}, {}
  for i, name in ipairs(keys) do
    out[name].name = name
    list[i], index[name] = out[name], i
  end
  ctx.upstream_index, ctx.upstream_names = index, keys
  return list
end)

-- Request paths are normalised before routing (docs/routing.md), so a route path that is not in
-- normal form could never match: refuse it, naming the form it would have to be written in.
local function normal_form(v)
  if v:find("[%z\1-\32\127\\?#]") then return nil, "spaces, control bytes, '\\', '?' and '#' cannot appear in a path" end
  local bad
  local decoded = v:gsub("%%(..)", function(h)
    if not h:match("^%x%x$") then bad = "invalid %-encoding" return end
    local c = string.char(tonumber(h, 16))
    if c:match("[%w%-%._~]") then return c end
    return "%" .. h:upper()
  end)
  if bad then return nil, bad end
  local out = {}
  for seg in (decoded .. "/"):gmatch("([^/]*)/") do
    if seg == ".." then
      if #out == 0 then return nil, "'..' climbs above the root" end
      out[#out] = nil
    elseif seg ~= "." and seg ~= "" then
      out[#out + 1] = seg
    end
  end
  local norm = "/" .. table.concat(out, "/")
  if #out > 0 and (decoded:sub(-1) == "/" or decoded:match("/%.%.?$")) then norm = norm .. "/" end
  return norm
end

local function abs_path(v, path)
  if type(v) ~= "string" or v:sub(1, 1) ~= "/" then expected(path, 'string starting with "/"', v) end
  local norm, why = normal_form(v)
  if not norm then fail(path, "not a normalised path: " .. why .. ", got " .. describe(v)) end
  if norm ~= v then
    fail(path, "not a normalised path (requests are normalised before routing, so it would never match): write " ..
      describe(norm) .. " instead of " .. describe(v))
  end
  return v
end

-- Hosts are compared case-insensitively, so lowercase once here.
local function host_pattern(v, path)
  if type(v) == "string" then
    local h = v:lower()
    local bare = h:match("^%*%.(.+)$") or h
    if valid_hostname(bare) then return h end
  end
  expected(path, 'host name or "*.domain"', v)
end

local function method(v, path)
  if type(v) == "string" and v:match("^[%w_-]+$") then return v:upper() end
  expected(path, "HTTP method name", v)
end

-- Checks the syntax of a Lua pattern the way string.find would, but up front: find only
-- raises on the part of a pattern that a subject reaches, so probing with sample strings misses
-- errors (a bad pattern would then fail on some request, as a 500). Follows LuaJIT's
-- lib_string.c (Lua 5.1's lstrlib.c). Returns nil, or a message.
local MAXCAPTURES = 32

-- for_find: the pattern is used with string.find, which LuaJIT runs as a plain search when the
-- pattern holds none of ^$*+?.([%- (so "a)" is fine there, but not with gsub or match).
function M.lua_pattern_error(p, for_find)
  if type(p) ~= "string" then return "a pattern must be a string, got " .. type(p) end
  if for_find and not p:find("[%^%$%*%+%?%.%(%[%%%-]") then return nil end
  local n, i = #p, 1
  local open = {}        -- stack of unfinished captures (their numbers)
  local closed = {}      -- capture number -> true once closed
  local ncap = 0
  if p:sub(1, 1) == "^" then i = 2 end
  -- end of the single-character class starting at i (as classEnd)
  local function class_end(j)
    local c = p:sub(j, j)
    j = j + 1
    if c == "%" then
      if j > n then return nil, "malformed pattern (ends with '%')" end
      return j + 1
    elseif c == "[" then
      if p:sub(j, j) == "^" then j = j + 1 end
      repeat -- the first character is taken as is, so "[]]" is a set holding "]"
        if j > n then return nil, "malformed pattern (missing ']')" end
        local d = p:sub(j, j)
        j = j + 1
        if d == "%" and j <= n then j = j + 1 end
      until p:sub(j, j) == "]"
      return j + 1
    end
    return j
  end
  while i <= n do
    local c = p:sub(i, i)
    if c == "(" then
      ncap = ncap + 1
      if ncap > MAXCAPTURES then return "too many captures (at most " .. MAXCAPTURES .. ")" end
      if p:sub(i + 1, i + 1) == ")" then -- position capture
        closed[ncap] = true
        i = i + 2
      else
        open[#open + 1] = ncap
        i = i + 1
      end
    elseif c == ")" then
      local k = table.remove(open)
      if not k then return "invalid pattern capture (')' without '(')" end
      closed[k] = true
      i = i + 1
    elseif c == "$" and i == n then
      i = i + 1
    elseif c == "%" and p:sub(i + 1, i + 1) == "b" then
      if i + 3 > n then return "missing arguments to '%b' (write %bxy)" end
      i = i + 4
    elseif c == "%" and p:sub(i + 1, i + 1) == "f" then
      i = i + 2
      if p:sub(i, i) ~= "[" then return "missing '[' after '%f' in pattern" end
      local e, err = class_end(i)
      if not e then return err end
      i = e
    elseif c == "%" and p:sub(i + 1, i + 1):match("%d") then
      local l = tonumber(p:sub(i + 1, i + 1))
      if l == 0 or not closed[l] then return "invalid capture index %" .. l .. " (no such closed capture)" end
      i = i + 2
    else
      local e, err = class_end(i)
      if not e then return err end
      i = e
      local q = p:sub(i, i)
      if q == "?" or q == "*" or q == "+" or q == "-" then i = i + 1 end
    end
  end
  if #open > 0 then return "unfinished capture (missing ')')" end
  return nil
end

local function header_map(v, path)
  if type(v) ~= "table" then expected(path, "table of header name = value", v) end
  local out, orig = {}, {}
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then fail(path, "invalid header name " .. describe(k)) end
    keys[#keys + 1] = k
  end
  sort(keys)
  for _, k in ipairs(keys) do
    local val = v[k]
    local p = join(path, k)
    if not k:match("^[%w!#$%%&'*+.^_`|~-]+$") then fail(path, "invalid header name " .. quote(k), p) end
    if type(val) ~= "string" then expected(p, "string", val) end
    -- "~pattern" is matched with string.find on every request: check it now, not on the first
    -- request that reaches it.
    if val:sub(1, 1) == "~" then
      local perr = M.lua_pattern_error(val:sub(2), true)
      if perr then fail(p, "bad Lua pattern " .. quote(val:sub(2)) .. ": " .. perr) end
    end
    local lk = k:lower()
    if orig[lk] then fail(path, fmt("header %s given twice (as %s and %s)", quote(lk), quote(orig[lk]), quote(k)), p) end
    orig[lk], out[lk] = k, val
  end
  return out
end

-- An LPeg `re` pattern over the request path; named captures become req.params.
local function lua_pattern(v, path)
  if type(v) ~= "string" then expected(path, "LPeg re pattern string", v) end
  local ok_re, re = pcall(require, "re")
  if not ok_re then fail(path, "the 're' module (lua-lpeg) is not installed") end
  local ok, err = pcall(re.compile, v)
  if not ok then fail(path, "bad pattern " .. quote(v) .. ": " .. tostring(err):gsub("^.-:%d+: ", "")) end
  return v
end

-- Filters ---------------------------------------------------------------------------------------
--
-- Every entry of a route's `filters` is resolved here, at load, into a filter table: modules are
-- required, factories called with their options, and every filter table checked. So `moonring
-- -t`, a start and a reload all refuse what would otherwise pass and never run (a misspelt phase,
-- a form the core does not take), with the file, line and key. The forms:
--   "module"                 the module returns a filter table, or a factory (called with {})
--   { "module", options }    the module returns a factory, called with the options table
--   { on_request = fn, ... } an inline filter table: phase keys only
-- The resolved chain goes to the runtime in route.chain, so each VM calls a factory once.

local PHASES = { "on_request", "on_response", "on_body", "on_log" }
local PHASE_SET = { on_request = true, on_response = true, on_body = true, on_log = true }
local PHASE_LIST = "on_request, on_response, on_body, on_log"
-- For "did you mean" on a misspelt stock filter (spec/unit/config_spec.lua keeps this in step
-- with lua/moonring/filters/).
M.STOCK_FILTERS = {
  "moonring.filters.access_log_json", "moonring.filters.basic_auth", "moonring.filters.cors",
  "moonring.filters.headers", "moonring.filters.ip_restriction", "moonring.filters.rate_limit",
  "moonring.filters.redirect", "moonring.filters.request_id", "moonring.filters.respond",
  "moonring.filters.rewrite", "moonring.filters.gzip", "moonring.filters.cache", "moonring.filters.error_pages",
}

-- This file is <lua dir>/moonring/config.lua; the same directory comes first at runtime (see
-- config.c), so `require "moonring"` means ours even next to a config file named moonring.lua.
local own_path = ""
do
  local src = debug.getinfo(1, "S").source
  local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/moonring/config%.lua$")
  if dir then own_path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" end
end

local function first_line(s)
  return (tostring(s):gsub("\n.*", ""))
end

local function require_filter(name, path, ctx)
  local saved = package.path
  package.path = own_path .. (ctx.lua_path or "") .. saved
  local ok, mod = pcall(require, name)
  package.path = saved
  if ok then return mod end
  local msg = tostring(mod)
  if msg:find("^module '" .. name:gsub("%p", "%%%0") .. "' not found") then
    local hint = did_you_mean(name, M.STOCK_FILTERS)
    fail(path, "filter module '" .. name .. "' not found (searched the config's directory, lua_path and "
      .. "moonring's lua/)" .. hint)
  end
  -- A module that fails to compile: its own file:line is on the second line.
  local inner = msg:match("^error loading module '[^']*' from file [^\n]*\n%s*([^\n]+)")
  fail(path, "cannot load filter module '" .. name .. "': " .. (inner or first_line(msg)))
end

-- strict: an inline table, where anything but a phase is a mistake. A table a module or a
-- factory returns may carry other fields, but none that looks like a misspelt phase.
local function check_filter_table(f, path, strict, whose)
  local keys, nphases = {}, 0
  for k in pairs(f) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local v = f[k]
    if PHASE_SET[k] then
      if type(v) ~= "function" then
        fail(join(path, k), "filter phase must be a function" .. whose .. ", got " .. describe(v))
      end
      nphases = nphases + 1
    elseif type(k) ~= "string" then
      if strict then
        fail(path, "unexpected list item [" .. tostring(k) .. "] in a filter table (phases are named: "
          .. PHASE_LIST .. ")")
      end
    else
      local hint = suggest(k, PHASES)
      if strict or hint or k:sub(1, 3):lower() == "on_" then
        fail(join(path, k), "unknown filter phase '" .. k .. "'" .. whose
          .. (hint and (" (did you mean '" .. hint .. "'?)") or (" (phases: " .. PHASE_LIST .. ")")))
      end
    end
  end
  if strict and nphases == 0 then fail(path, "a filter table needs at least one phase (" .. PHASE_LIST .. ")") end
end

local FILTER_FORMS = 'a module name, { "module", options } or a table of phase functions'

local function filter(v, path, ctx)
  local t = type(v)
  if t == "table" and v[1] == nil then
    check_filter_table(v, path, true, "")
    return { filter = v }
  end
  local name, opts
  if t == "string" and v ~= "" then
    name = v
  elseif t == "table" then
    if type(v[1]) == "function" then
      fail(path, "{ function, ... } is not a filter form: name the factory's module ({ \"my.filter\", options })"
        .. " or write the phases by name ({ on_request = function(req, ctx) ... end })")
    end
    if type(v[1]) ~= "string" or v[1] == "" then expected(join(path, 1), "filter module name", v[1]) end
    for k in pairs(v) do
      if k ~= 1 and k ~= 2 then
        if type(k) == "string" then
          fail(join(path, k), "unexpected key '" .. k .. "' in { module, options }: options go in a table, "
            .. "{ " .. quote(v[1]) .. ", { " .. k .. " = ... } }")
        end
        fail(path, "{ module, options } takes two items, got item [" .. tostring(k) .. "]")
      end
    end
    name, opts = v[1], v[2]
    if opts ~= nil and type(opts) ~= "table" then expected(join(path, 2), "options table", opts) end
  elseif t == "function" then
    fail(path, "a function is not a filter: write { on_request = function(req, ctx) ... end } for an inline"
      .. " phase, or name a module")
  else
    expected(path, FILTER_FORMS, v)
  end
  local mod = require_filter(name, path, ctx)
  local f
  if type(mod) == "function" then
    local ok, made = pcall(mod, opts or {})
    if not ok then fail(path, first_line(type(made) == "string" and made or describe(made))) end
    if type(made) ~= "table" then
      fail(path, "the factory in module '" .. name .. "' returned " .. describe(made) .. ", not a filter table")
    end
    f = made
  elseif type(mod) == "table" then
    if opts ~= nil then
      fail(join(path, 2), "module '" .. name .. "' returns a filter table, not a factory, so it takes no options")
    end
    f = mod
  else
    fail(path, "module '" .. name .. "' returned " .. describe(mod) .. ", not a filter table or a factory function")
  end
  check_filter_table(f, path, false, " (in module '" .. name .. "')")
  return { filter = f, module = name }
end

local function finish_route(out, raw, path, ctx)
  local i = path[#path]
  out.index = i
  out.filters = raw.filters -- as written; the resolved filters are in out.chain
  out.name = out.name or fmt("routes[%d]", i)
  if out.upstream ~= nil and out.handler ~= nil then
    fail(path, "has both 'upstream' and 'handler' (set exactly one)")
  elseif out.upstream == nil and out.handler == nil then
    fail(path, "needs 'upstream' or 'handler'")
  end
  if out.path and out.exact then
    fail(path, "'path' and 'exact' are mutually exclusive")
  end
  if out.strip_prefix and not out.path then
    fail(join(path, "strip_prefix"), "requires 'path'")
  end
  if out.upstream then
    local up = out.upstream
    local p = join(path, "upstream")
    -- Upstream names cannot contain ':', so a colon unambiguously means an address.
    if up:find(":", 1, true) then
      local a, why = parse_addr(up, false)
      if why == "port" then fail(p, "port must be 1-65535, got " .. describe(up)) end
      if not a then expected(p, 'upstream name or "host:port"', up) end
      out.upstream_addr = a
      -- the settings of an upstream with that one server, every default filled in as for a
      -- named upstream (the C side restates none)
      out.adhoc = upstream({ servers = { up } }, p, ctx)
    else
      local id = ctx.upstream_index[up]
      if not id then
        fail(p, "unknown upstream '" .. up .. "'" .. did_you_mean(up, ctx.upstream_names))
      end
      out.upstream_id = id
    end
    out.kind = "upstream"
  else
    out.kind = "handler"
  end
  out.simple = out.headers == nil and out.pattern == nil and out.match == nil
  return out
end

local route = S.record({
  { "name", S.string },
  { "path", abs_path },
  { "exact", abs_path },
  { "host", S.list(host_pattern, { one = true, min = 1, what = "list of hosts" }) },
  { "method", S.list(method, { one = true, min = 1, what = "list of methods" }) },
  { "headers", header_map },
  { "pattern", lua_pattern },
  { "match", S.func },
  { "upstream", S.string },
  { "handler", S.func },
  { "filters", S.list(filter, { what = "list of filters" }), out = "chain" },
  { "set_host", S.string },
  { "strip_prefix", S.bool, default = false },
  { "client_max_body_size", S.size() },
}, finish_route)

local limits = S.record({
  { "max_request_line", S.size(1), default = "8k" },
  { "max_header_size", S.size(1), default = "32k" },
  { "max_headers", S.int(1), default = 100 },
  { "client_max_body_size", S.size(), default = "1m" },
  { "header_timeout", S.duration(1), default = "60s", out = "header_timeout_ms" },
  { "body_timeout", S.duration(1), default = "60s", out = "body_timeout_ms" },
  { "keepalive_timeout", S.duration(), default = "75s", out = "keepalive_timeout_ms" },
  { "send_timeout", S.duration(1), default = "60s", out = "send_timeout_ms" },
  { "max_connections", S.int(1), default = 10000 },
  { "max_connections_per_ip", S.int(0), default = 0 },
  { "keepalive_requests", S.int(1), default = 1000 },
})

-- Host names resolved at run time: upstream servers named by host (again once their address is
-- older than ttl), req:set_upstream("name:port"), cosockets (src/net/resolver.h).
local resolver_opts = S.record({
  { "ttl", S.duration(1), default = "30s", out = "ttl_ms" },
  { "negative_ttl", S.duration(1), default = "5s", out = "negative_ttl_ms" },
})

-- How the request path is normalised before routing (docs/routing.md).
local http_opts = S.record({
  { "merge_slashes", S.bool, default = true },
  { "escaped_slashes", S.enum("reject", "keep", "decode"), default = "reject" },
  { "path_params", S.enum("last", "keep", "reject"), default = "last" },
})

local proxy = S.record({
  { "x_forwarded_for", S.bool, default = true },
  { "x_forwarded_proto", S.bool, default = true },
  { "via", S.bool, default = true },
  { "buffer_size", S.size(1024), default = "64k" },
  -- The Server field of moonring's own (local and error) responses; false sends none.
  { "server_header", S.string_or_false, default = "moonring" },
})

local shared = S.map(NAME_PAT, NAME_WHAT, S.size(1), function(out, keys)
  local list = {}
  for i, k in ipairs(keys) do list[i] = { name = k, size = out[k] } end
  return list
end)

-- Limits on Lua code run by the workers (see docs/config.md, "lua").
local lua_opts = S.record({
  { "time_budget", S.duration(1), default = "1s", out = "time_budget_ms" },
  { "max_timers", S.int(1), default = 1024 },
  { "max_body", S.size(1), default = "1m" },
  { "http_max_response", S.size(1), default = "16m" },
  { "ssl_trusted_certificate", readable_file },
  { "ssl_verify_depth", S.int(1, 100) },
  { "ngx", S.bool, default = false },
})

-- admin.token: every admin request must carry it ("Authorization: Bearer <token>"); it is also
-- what allows a listen address other than loopback (checked after resolution, in C).
local function admin_token(v, path)
  if type(v) ~= "string" or #v < 16 or v:find("[%s%c]") then
    expected(path, "a string of at least 16 characters without spaces", v)
  end
  return v
end

local admin = S.record({
  { "listen", S.addr(true), required = true },
  { "token", admin_token },
}, function(out, raw, path, ctx)
  local a = out.listen
  local other = ctx.listen_addrs and ctx.listen_addrs[a.addr]
  if other then
    fail(join(path, "listen"), fmt("address %s already used by listen[%d]", quote(a.addr), other))
  end
  return { addr = a.addr, host = a.host, port = a.port, token = out.token }
end)

local reload = S.record({
  { "drain_timeout", S.duration(1), default = "60s", out = "drain_timeout_ms" },
})

-- Shared dicts must exist before filter factories run (a rate limiter checks its dict when it
-- is built), so the C loader passes a hook that creates them as soon as `shared` is validated.
local function shared_defined(v, path, ctx)
  local list = shared(v, path, ctx)
  if ctx.define_shared then
    for _, d in ipairs(list) do
      local ok, err = ctx.define_shared(d.name, d.size)
      if not ok then fail(join(path, d.name), err or "cannot create the shared dict") end
    end
  end
  return list
end

-- Field order matters: lua_path and shared come before routes, whose filters need both.
local top = S.record({
  { "workers", workers, default = "auto" },
  { "pid", pid_path, default = false },
  { "error_log", error_log_target, default = "stderr" },
  { "log_level", S.enum("debug", "info", "notice", "warn", "error"), default = "info" },
  { "access_log", access_log_spec, default = false },
  { "access_log_format", S.string, default = "combined" },
  { "log_formats", log_formats, default = {} },
  { "real_ip", real_ip },
  { "user", account },
  { "group", account },
  { "loop", S.enum("auto", "io_uring", "epoll"), default = "auto" },
  { "lua_path", search_path, default = "" },
  { "shutdown_timeout", S.duration(), default = "10s", out = "shutdown_timeout_ms" },
  { "listen", listen, required = true },
  { "admin", admin },
  { "reload", reload, default = {} },
  { "shared", shared_defined, default = {} },
  { "upstreams", upstreams, default = {} },
  { "routes", S.list(route, { what = "list of routes" }) },
  { "router", S.func },
  { "init_worker", S.func },
  { "limits", limits, default = {} },
  { "proxy", proxy, default = {} },
  { "http", http_opts, default = {} },
  { "resolver", resolver_opts, default = {} },
  { "lua", lua_opts, default = {} },
}, function(out, raw, path, ctx)
  if not out.router then
    if out.routes == nil then fail({ "routes" }, "required unless 'router' is set") end
    if #out.routes == 0 then fail({ "routes" }, "must not be empty unless 'router' is set") end
  end
  out.routes = out.routes or {}
  out.upstream_index = ctx.upstream_index
  -- access_log = { path, format }: the format named there wins over access_log_format.
  local fmt_path = { "access_log_format" }
  if type(out.access_log) == "table" then
    if out.access_log.format then
      out.access_log_format = out.access_log.format
      fmt_path = { "access_log", "format" }
    end
    out.access_log = out.access_log.path
  end
  local name = out.access_log_format
  local named = out.log_formats[name]
  if named then
    out.access_log_template, out.access_log_escape = named.format, named.escape
  elseif name ~= "combined" and name ~= "json" then
    local known = { '"combined"', '"json"' }
    for k in pairs(out.log_formats) do known[#known + 1] = quote(k) end
    sort(known)
    fail(fmt_path, "unknown format " .. quote(name) .. " (known: " .. table.concat(known, ", ") .. ")")
  end
  -- The settings of an upstream that sets nothing, for upstreams made at run time
  -- (req:set_upstream("host:port")): from the same record, so C restates no default.
  local d = upstream({ servers = { "127.0.0.1:1" } }, { "upstreams" }, ctx)
  d.servers = nil
  out.upstream_defaults = d
  return out
end)

---------------------------------------------------------------------------
-- Source line lookup
--
-- Tables do not remember where their keys were written, so after a failure we
-- re-read the source and look for the key path in the token stream. This is a
-- heuristic: it follows literal table constructors and simple variable
-- references, and gives up (no line) rather than guess wildly.
---------------------------------------------------------------------------

-- Block keywords count as nesting too, so `local path = ...` inside a handler
-- body is never mistaken for a route's `path = ...` key.
local OPENERS = { ["{"] = true, ["("] = true, ["["] = true,
                  ["function"] = true, ["if"] = true, ["do"] = true, ["repeat"] = true }
local CLOSERS = { ["}"] = true, [")"] = true, ["]"] = true, ["end"] = true, ["until"] = true }
local OPS3 = { ["..."] = true }
local OPS2 = { ["=="] = true, ["~="] = true, ["<="] = true, [">="] = true, [".."] = true, ["::"] = true }

local function count_nl(s)
  return select(2, s:gsub("\n", ""))
end

local function lex(src)
  local toks, n, i, line = {}, #src, 1, 1
  local depth, stack = 0, {}
  local function push(k, v, ln)
    local t = { k = k, v = v, line = ln }
    local idx = #toks + 1
    local structural = k == "op" or k == "name"
    if structural and OPENERS[v] then
      t.depth = depth
      depth = depth + 1
      stack[#stack + 1] = idx
    elseif structural and CLOSERS[v] then
      depth = math.max(depth - 1, 0)
      t.depth = depth
      local o = table.remove(stack)
      if o then toks[o].match = idx end
    else
      t.depth = depth
    end
    toks[idx] = t
  end
  if src:sub(1, 1) == "#" then i = src:find("\n", 1, true) or n + 1 end
  while i <= n do
    local c = src:sub(i, i)
    if c == "\n" then
      line, i = line + 1, i + 1
    elseif c:match("%s") then
      i = i + 1
    elseif src:sub(i, i + 1) == "--" then
      local eq = src:match("^%[(=*)%[", i + 2)
      local e
      if eq then
        _, e = src:find("]" .. eq .. "]", i, true)
      else
        e = (src:find("\n", i, true) or n + 1) - 1
      end
      e = e or n
      line = line + count_nl(src:sub(i, e))
      i = e + 1
    elseif c == '"' or c == "'" then
      local j, start = i + 1, line
      while j <= n do
        local ch = src:sub(j, j)
        if ch == "\\" then
          if src:sub(j + 1, j + 1) == "\n" then line = line + 1 end
          j = j + 2
        elseif ch == c or ch == "\n" then
          break
        else
          j = j + 1
        end
      end
      push("str", src:sub(i + 1, j - 1), start)
      i = j + 1
    elseif c == "[" and src:match("^%[=*%[", i) then
      local eq = src:match("^%[(=*)%[", i)
      local _, e = src:find("]" .. eq .. "]", i, true)
      e = e or n
      local body = src:sub(i + #eq + 2, e - #eq - 2)
      push("str", (body:gsub("^\r?\n", "")), line)
      line = line + count_nl(src:sub(i, e))
      i = e + 1
    elseif c:match("[%a_]") then
      local w = src:match("^[%w_]+", i)
      push("name", w, line)
      i = i + #w
    elseif c:match("%d") or (c == "." and src:sub(i + 1, i + 1):match("%d")) then
      local j = i
      while true do
        local m = src:match("^[%w_.]*", j)
        j = j + #m
        if m:match("[eEpP]$") and src:sub(j, j):match("[+-]") then j = j + 1 else break end
      end
      push("num", src:sub(i, j - 1), line)
      i = j
    else
      local op = OPS3[src:sub(i, i + 2)] and src:sub(i, i + 2)
        or OPS2[src:sub(i, i + 1)] and src:sub(i, i + 1) or c
      push("op", op, line)
      i = i + #op
    end
  end
  return toks
end

local function is_op(toks, i, v)
  local t = toks[i]
  return t ~= nil and t.k == "op" and t.v == v
end

-- Tokens of the expression starting at i: up to the next separator at the same
-- nesting, or the end of the enclosing construct.
local function value_range(toks, i)
  local t = toks[i]
  if not t then return nil end
  if t.k == "op" and t.v == "{" and t.match then return i, t.match end
  local d, j = t.depth, i
  while toks[j + 1] do
    local u = toks[j + 1]
    if u.depth < d then break end
    if u.depth == d and u.k == "op" and (u.v == "," or u.v == ";") then break end
    j = j + 1
  end
  return i, j
end

-- `name =` or `["name"] =` within [a, b], preferring the shallowest match so a
-- table's own keys win over same-named keys nested deeper inside it.
-- Returns the key token index and the value's first token index.
local function find_key(toks, a, b, name)
  local best, bestv, bestd
  for i = a, b do
    local t, vi = toks[i], nil
    if t.k == "name" and t.v == name and is_op(toks, i + 1, "=") then
      vi = i + 2
    elseif t.k == "op" and t.v == "[" and toks[i + 1] and toks[i + 1].k == "str"
        and toks[i + 1].v == name and is_op(toks, i + 2, "]") and is_op(toks, i + 3, "=") then
      vi = i + 4
    end
    if vi and toks[vi] and (not bestd or t.depth < bestd) then
      best, bestv, bestd = i, vi, t.depth
    end
  end
  return best, bestv
end

-- The n-th positional item of the first table constructor in [a, b].
local function find_item(toks, a, b, n)
  local open
  for i = a, b do
    if is_op(toks, i, "{") then open = i break end
  end
  if not open or not toks[open].match then return nil end
  local close, count, i = toks[open].match, 0, open + 1
  while i < close do
    local t = toks[i]
    if t.k == "op" and (t.v == "," or t.v == ";") then
      i = i + 1
    else
      local keyed = (t.k == "name" and is_op(toks, i + 1, "="))
        or (t.k == "op" and t.v == "[" and t.match and is_op(toks, t.match + 1, "="))
      local s, e = value_range(toks, i)
      if not keyed then
        count = count + 1
        if count == n then return i, s, e end
      end
      i = e + 1
    end
  end
  return nil
end

-- A value that is a bare variable: continue from where that variable was
-- assigned, so `upstreams = { origin = origin }` still finds lines.
local function follow_var(toks, a, b)
  for _ = 1, 3 do
    if a ~= b or toks[a].k ~= "name" then break end
    local ki, vi = find_key(toks, 1, #toks, toks[a].v)
    if not ki or vi == a then break end
    a, b = value_range(toks, vi)
  end
  return a, b
end

local function locate(toks, path)
  local a, b, line = 1, #toks, nil
  for _, comp in ipairs(path) do
    if not a or a > b then break end
    local ki, s, e
    if type(comp) == "string" then
      local vi
      ki, vi = find_key(toks, a, b, comp)
      if ki then s, e = value_range(toks, vi) end
    else
      ki, s, e = find_item(toks, a, b, comp)
    end
    if not ki then break end
    line = toks[ki].line
    a, b = follow_var(toks, s, e)
  end
  return line
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function source_line(file, at)
  local src = read_file(file)
  if not src then return nil end
  local ok, line = pcall(function() return locate(lex(src), at) end)
  return ok and line or nil
end

---------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

-- realpath(3) through the FFI when there is one (LuaJIT), else $PWD.
local realpath
do
  local okf, ffi = pcall(require, "ffi")
  if okf then
    pcall(ffi.cdef, "char *realpath(const char *path, char *resolved_path);")
    pcall(ffi.cdef, "void free(void *ptr);")
    realpath = function(p)
      local ok, r = pcall(ffi.C.realpath, p, nil)
      if not ok or r == nil then return nil end
      local s = ffi.string(r)
      ffi.C.free(r)
      return s
    end
  end
end

-- The absolute directory of a config file: relative paths in it are relative to this, whatever
-- the working directory.
local function config_dir(file)
  local d = dirname(file)
  if d:sub(1, 1) == "/" then return realpath and realpath(d) or d end
  local abs = realpath and realpath(d)
  if abs then return abs end
  local pwd = os.getenv("PWD")
  if not pwd then return d end
  return d == "." and pwd or (pwd .. "/" .. d)
end

-- opts.define_shared(name, size) -> true | nil, err: creates a shared dict (the C loader's hook;
-- see shared_defined).
function M.normalise(tbl, file, opts)
  file = file or "config"
  if type(tbl) ~= "table" then
    return nil, file .. ": config must return a table, got " .. type(tbl)
  end
  local ctx = { dir = config_dir(file), define_shared = opts and opts.define_shared }
  -- Filter factories resolve their own relative paths (error_pages' files) against this.
  M.dir = ctx.dir
  local ok, res = pcall(top, tbl, {}, ctx)
  if not ok then
    if type(res) ~= "table" then return nil, file .. ": " .. tostring(res) end
    local line = source_line(file, res.at or res.path)
    local where = line and (file .. ":" .. line) or file
    if #res.path > 0 then where = where .. ": " .. fmt_path(res.path) end
    return nil, where .. ": " .. res.msg
  end
  res.file, res.dir = file, ctx.dir
  return res
end

-- opts.env: extra globals for the chunk; opts.define_shared: see M.normalise.
function M.load(path, opts)
  if type(path) ~= "string" then return nil, "config path must be a string, got " .. type(path) end
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  local env = {}
  if opts and opts.env then
    for k, v in pairs(opts.env) do env[k] = v end
  end
  setfenv(chunk, setmetatable(env, { __index = _G }))
  -- Let the config require modules that sit next to it, as it will be able to
  -- at runtime through lua_path; restore package.path so loading has no lasting
  -- side effects on the caller.
  local d = config_dir(path)
  d = d == "/" and "" or d
  local saved = package.path
  package.path = own_path .. d .. "/?.lua;" .. d .. "/?/init.lua;" .. saved
  -- The global `ngx` (lua.ngx, moonring.ngx) is installed on first use while the config and
  -- the modules it loads run: OpenResty libraries read it when they load, before the config
  -- says whether it wants the layer. Afterwards it stays only if the config asked for it.
  local lazy = rawget(_G, "ngx") == nil and getmetatable(_G) == nil
  local wanted = false
  local lazy_mt
  if lazy then
    lazy_mt = { __index = function(_, k)
      if k ~= "ngx" then return nil end
      wanted = true
      local n = require "moonring.ngx"
      rawset(_G, "ngx", n)
      return n
    end }
    setmetatable(_G, lazy_mt)
  end
  -- (a config that set a metatable of its own on _G keeps it)
  local function unlazy() if getmetatable(_G) == lazy_mt then setmetatable(_G, nil) end end
  local ok, res = pcall(chunk)
  package.path = saved
  if not ok then
    if type(res) ~= "string" then res = "error: " .. describe(res) end
    -- A module that fails to compile: its own file:line is on the second line.
    local mod, inner = res:match("^error loading module '([^']*)' from file [^\n]*\n%s*([^\n]+)")
    if mod then res = inner .. " (module '" .. mod .. "' required by " .. path .. ")" end
    -- error(msg, 0) and non-string errors carry no position; keep the file at least.
    if not res:match("^[^\n]-:%d+: ") then res = path .. ": " .. res end
    if lazy then unlazy() end
    return nil, (res:gsub("\n.*", ""))
  end
  local cfg, err = M.normalise(res, path, opts)
  if lazy then
    unlazy()
    if cfg and cfg.lua.ngx then
      rawset(_G, "ngx", require "moonring.ngx")
    elseif wanted then
      rawset(_G, "ngx", nil)
      if cfg then
        return nil, path .. ": the config's code uses the global 'ngx' (OpenResty's API): set lua = { ngx = true } "
          .. "to install moonring's compatibility layer"
      end
    end
  end
  return cfg, err
end

-- The source line of a key path written as in messages ("listen[2].tls.certs[1].key"), or nil:
-- the C side uses it for errors it finds itself (e.g. a certificate file that is not PEM).
function M.line_of(file, keypath)
  local path = {}
  for part in keypath:gmatch("[^.]+") do
    local name, rest = part:match("^([^%[]*)(.*)$")
    if name ~= "" then path[#path + 1] = name end
    for idx in rest:gmatch("%[(%d+)%]") do path[#path + 1] = tonumber(idx) end
  end
  return source_line(file, path)
end

-- Exposed for the C side and tests that need the same parsing rules.
M.parse_duration = parse_duration
M.parse_size = parse_size
-- Shared with the stock filters' option checks ("did you mean").
M.levenshtein = levenshtein
M.parse_addr = parse_addr

return M
