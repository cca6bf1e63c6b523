-- The OpenResty compatibility layer: the global `ngx` over moonring's own API, so that scripts
-- and lua-resty-* libraries written for OpenResty run unmodified. Switched on by
-- `lua = { ngx = true }` (moonring.config installs it in every VM before the config's code and
-- filter modules run); off by default, so code that does not use it pays nothing.
--
-- Mapping of phases: a filter's on_request is OpenResty's access phase (rewrite/access), a
-- route handler is the content phase, on_response is header_filter, on_body is body_filter
-- (ngx.arg), on_log is log, and timer callbacks (init_worker included) are the timer context.
-- The current request is moonring._cur (the owner the runtime is running); the hot calls
-- (ngx.var.*, ngx.req.get_headers, set_header, ngx.header) go to the FFI request API.
-- docs/ngx.md lists what is covered and what is not.
local ffi = require "ffi"
local moonring = require "moonring"
local base = require "moonring.base"
local bit = require "bit"

local type, tostring, tonumber, pairs, ipairs, select, error, rawget, rawset, setmetatable =
  type, tostring, tonumber, pairs, ipairs, select, error, rawget, rawset, setmetatable
local concat, sort = table.concat, table.sort
local sub, byte, char, find, lower, gsub, format, rep = string.sub, string.byte, string.char, string.find,
  string.lower, string.gsub, string.format, string.rep
local floor = math.floor

pcall(ffi.cdef, [[
unsigned char *MD5(const unsigned char *d, size_t n, unsigned char *md);
unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md);
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha1(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d, size_t n,
                    unsigned char *md, unsigned int *md_len);
int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
uint32_t mr_crc32(const unsigned char *p, size_t n);
int getpid(void);
long sysconf(int name);
int gethostname(char *name, size_t len);
int mr_lua_worker_id(void);
int mr_req_want_response_phase(void *r);
int mr_req_raw_target(void *r, const char **s, size_t *n);
int mr_lua_vm_retired(void *vm);
]])
local C = ffi.C

local ngx = {}
-- raised by ngx.exit & co. to end the current handler (see ngx._wrap_phase)
local EXIT = setmetatable({}, { __tostring = function() return "ngx.exit" end })
require("moonring.thread").quiet[EXIT] = true

local function runtime() return package.loaded["moonring.runtime"] end

-- The request state of the phase running now, or an error naming the API.
local function cur(api)
  local o = moonring._cur
  if not o or not o.req then
    error("API disabled in the current context" .. (api and (" (" .. api .. ")") or ""), 3)
  end
  return o
end

local PHASES = { "access", "content", "header_filter", "body_filter", "log" }

-- Constants ---------------------------------------------------------------------------------

ngx.null = require("cjson").null
ngx.OK, ngx.ERROR, ngx.AGAIN, ngx.DONE, ngx.DECLINED = 0, -1, -2, -4, -5
ngx.STDERR, ngx.EMERG, ngx.ALERT, ngx.CRIT, ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.INFO, ngx.DEBUG = 0, 1, 2, 3, 4, 5, 6, 7, 8
for k, v in pairs({
  HTTP_CONTINUE = 100, HTTP_SWITCHING_PROTOCOLS = 101, HTTP_OK = 200, HTTP_CREATED = 201, HTTP_ACCEPTED = 202,
  HTTP_NO_CONTENT = 204, HTTP_PARTIAL_CONTENT = 206, HTTP_SPECIAL_RESPONSE = 300, HTTP_MOVED_PERMANENTLY = 301,
  HTTP_MOVED_TEMPORARILY = 302, HTTP_SEE_OTHER = 303, HTTP_NOT_MODIFIED = 304, HTTP_TEMPORARY_REDIRECT = 307,
  HTTP_PERMANENT_REDIRECT = 308, HTTP_BAD_REQUEST = 400, HTTP_UNAUTHORIZED = 401, HTTP_PAYMENT_REQUIRED = 402,
  HTTP_FORBIDDEN = 403, HTTP_NOT_FOUND = 404, HTTP_NOT_ALLOWED = 405, HTTP_NOT_ACCEPTABLE = 406,
  HTTP_REQUEST_TIMEOUT = 408, HTTP_CONFLICT = 409, HTTP_GONE = 410, HTTP_UPGRADE_REQUIRED = 426,
  HTTP_TOO_MANY_REQUESTS = 429, HTTP_CLOSE = 444, HTTP_ILLEGAL = 451, HTTP_INTERNAL_SERVER_ERROR = 500,
  HTTP_METHOD_NOT_IMPLEMENTED = 501, HTTP_BAD_GATEWAY = 502, HTTP_SERVICE_UNAVAILABLE = 503,
  HTTP_GATEWAY_TIMEOUT = 504, HTTP_VERSION_NOT_SUPPORTED = 505, HTTP_INSUFFICIENT_STORAGE = 507,
  HTTP_GET = 2, HTTP_HEAD = 4, HTTP_POST = 8, HTTP_PUT = 16, HTTP_DELETE = 32, HTTP_MKCOL = 64, HTTP_COPY = 128,
  HTTP_MOVE = 256, HTTP_OPTIONS = 512, HTTP_PROPFIND = 1024, HTTP_PROPPATCH = 2048, HTTP_LOCK = 4096,
  HTTP_UNLOCK = 8192, HTTP_PATCH = 16384, HTTP_TRACE = 32768,
}) do ngx[k] = v end
local METHOD_NAMES = {
  [2] = "GET", [4] = "HEAD", [8] = "POST", [16] = "PUT", [32] = "DELETE", [64] = "MKCOL", [128] = "COPY",
  [256] = "MOVE", [512] = "OPTIONS", [1024] = "PROPFIND", [2048] = "PROPPATCH", [4096] = "LOCK",
  [8192] = "UNLOCK", [16384] = "PATCH", [32768] = "TRACE",
}

ngx.is_subrequest = false

-- Logging --------------------------------------------------------------------------------------

local LOG = { [0] = "error", "error", "error", "error", "error", "warn", "notice", "info", "debug" }

local function piece(v)
  if v == nil then return "nil" end
  if v == ngx.null then return "null" end
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t == "table" then
    local parts = {}
    for i = 1, #v do parts[i] = piece(v[i]) end
    return concat(parts)
  end
  return tostring(v)
end

function ngx.log(level, ...)
  local l = LOG[level]
  if not l then error("bad log level: " .. tostring(level), 2) end
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = piece((select(i, ...))) end
  moonring.log(l, concat(parts))
end

-- Time -------------------------------------------------------------------------------------------

function ngx.now() return floor(moonring.now() * 1000) / 1000 end
function ngx.time() return floor(moonring.now()) end
function ngx.update_time() end
function ngx.today() return os.date("%Y-%m-%d") end
function ngx.localtime() return os.date("%Y-%m-%d %H:%M:%S") end
function ngx.utctime() return os.date("!%Y-%m-%d %H:%M:%S") end
function ngx.http_time(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", floor(t)) end
function ngx.cookie_time(t) return os.date("!%a, %d-%b-%y %H:%M:%S GMT", floor(t)) end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
-- days from the civil date (proleptic Gregorian) to 1970-01-01, without the local time zone
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- RFC 1123, RFC 850 and asctime dates, as nginx's ngx_parse_http_time; nil when malformed.
function ngx.parse_http_time(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, h, mi, sec = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tonumber(y); y = y + (y < 70 and 2000 or 1900) end
  end
  if not d then
    mon, d, h, mi, sec, y = s:match("^%a+ (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  local m = mon and MONTHS[mon]
  if not m then return nil end
  y, d, h, mi, sec = tonumber(y), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + sec
end

ngx.sleep = function(s) return moonring.sleep(s) end

-- Encodings and hashes -------------------------------------------------------------------------

local b64buf, b64cap = nil, 0
function ngx.encode_base64(s, no_padding)
  if type(s) ~= "string" then
    if s == nil then s = "" elseif type(s) == "number" then s = tostring(s) else error("string argument only", 2) end
  end
  local need = floor((#s + 2) / 3) * 4 + 1
  if need > b64cap then b64cap = need; b64buf = ffi.new("unsigned char[?]", need) end
  local n = C.EVP_EncodeBlock(b64buf, s, #s)
  local out = ffi.string(b64buf, n)
  if no_padding then out = gsub(out, "=+$", "") end
  return out
end

local util = require "moonring.filters._util"
local B64_OK = "^[A-Za-z0-9+/]*=?=?$"
function ngx.decode_base64(s)
  if type(s) ~= "string" then error("string argument only", 2) end
  if not find(s, B64_OK) then return nil end
  local n = #(gsub(s, "=", ""))
  if n % 4 == 1 then return nil end
  -- _util's decoder is bounded (basic_auth); longer input goes through in pieces of 4096
  if #s <= 4096 then return (util.b64decode(s)) end
  local parts = {}
  for i = 1, #s, 4096 do
    local p = util.b64decode(sub(s, i, i + 4095))
    if not p then return nil end
    parts[#parts + 1] = p
  end
  return concat(parts)
end

local mdbuf = ffi.new("unsigned char[64]")
local mdlen = ffi.new("unsigned int[1]")
local function hex(s) return (gsub(s, ".", function(c) return format("%02x", byte(c)) end)) end
local function str_arg(s) if type(s) == "number" then return tostring(s) end if s == nil then return "" end return s end

function ngx.md5_bin(s) s = str_arg(s); C.MD5(s, #s, mdbuf); return ffi.string(mdbuf, 16) end
function ngx.md5(s) return hex(ngx.md5_bin(s)) end
function ngx.sha1_bin(s) s = str_arg(s); C.SHA1(s, #s, mdbuf); return ffi.string(mdbuf, 20) end
function ngx.hmac_sha1(key, s)
  key, s = str_arg(key), str_arg(s)
  C.HMAC(C.EVP_sha1(), key, #key, s, #s, mdbuf, mdlen)
  return ffi.string(mdbuf, mdlen[0])
end
function ngx.crc32_long(s) s = str_arg(s); return tonumber(C.mr_crc32(s, #s)) end
ngx.crc32_short = ngx.crc32_long

-- URI component escaping: everything but unreserved characters (RFC 3986).
function ngx.escape_uri(s)
  if type(s) == "number" then s = tostring(s) elseif s == nil then return "" end
  return (gsub(s, "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

function ngx.unescape_uri(s)
  if type(s) == "number" then s = tostring(s) elseif s == nil then return "" end
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

function ngx.encode_args(t)
  if type(t) ~= "table" then error("bad argument #1 to 'encode_args' (table expected, got " .. type(t) .. ")", 2) end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    local ek = ngx.escape_uri(tostring(k))
    if type(v) == "table" then
      for _, x in ipairs(v) do
        if x == true then out[#out + 1] = ek elseif x ~= false then out[#out + 1] = ek .. "=" .. ngx.escape_uri(tostring(x)) end
      end
    elseif v == true then
      out[#out + 1] = ek
    elseif v ~= false then
      out[#out + 1] = ek .. "=" .. ngx.escape_uri(tostring(v))
    end
  end
  return concat(out, "&")
end

-- Query-string decoding shared with req:args(): repeated keys become lists; a bare key is
-- `bare` (true for ngx, "" for moonring). At most max pairs (0 = all); then "truncated".
local function decode_args(s, max, bare)
  local t, n = {}, 0
  max = max or 100
  for pair in s:gmatch("[^&]+") do
    if max > 0 and n >= max then return t, "truncated" end
    n = n + 1
    local k, eq, v = pair:match("^([^=]*)(=?)(.*)$")
    k = ngx.unescape_uri(k)
    if k ~= "" then
      if eq == "" then v = bare else v = ngx.unescape_uri(v) end
      local old = t[k]
      if old == nil then t[k] = v
      elseif type(old) == "table" then old[#old + 1] = v
      else t[k] = { old, v } end
    end
  end
  return t
end
ngx._decode_args = decode_args

function ngx.decode_args(s, max)
  if type(s) ~= "string" then error("bad argument #1 to 'decode_args' (string expected)", 2) end
  return decode_args(s, max, true)
end

local SQL_ESC = { ["\0"] = "\\0", ["\b"] = "\\b", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                  ["\26"] = "\\Z", ["\\"] = "\\\\", ["'"] = "\\'", ['"'] = '\\"' }
function ngx.quote_sql_str(s)
  return "'" .. gsub(tostring(s), "[%z\b\n\r\t\26\\'\"]", SQL_ESC) .. "'"
end

-- Regexes, sockets, timers, threads, shared dicts -------------------------------------------

local re = require "moonring.re"
ngx.re = { match = re.match, find = re.find, gmatch = re.gmatch, sub = re.sub, gsub = re.gsub,
           split = re.split, opt = re.opt }

ngx.socket = {}
function ngx.socket.tcp() return require("moonring.ngx.socket").tcp() end
ngx.socket.stream = ngx.socket.tcp
function ngx.socket.udp() return require("moonring.ngx.socket").udp() end
function ngx.socket.connect(host, port, opts)
  local s = ngx.socket.tcp()
  local ok, err = s:connect(host, port, opts)
  if not ok then return nil, err end
  return s
end

ngx.timer = {
  at = function(delay, fn, ...) return moonring.timer.at(delay, fn, ...) end,
  every = function(delay, fn, ...) return moonring.timer.every(delay, fn, ...) end,
  running_count = function() return 0 end,
  pending_count = function() return moonring.timer.pending() end,
}

ngx.thread = {
  spawn = function(...) return moonring.thread.spawn(...) end,
  wait = function(...) return moonring.thread.wait(...) end,
  kill = function(...) return moonring.thread.kill(...) end,
}

ngx.shared = setmetatable({}, { __index = function(_, name) return moonring.shared[name] end })

ngx.location = {
  capture = function() error("ngx.location.capture is not supported by moonring (use moonring.http or lua-resty-http)", 2) end,
  capture_multi = function() error("ngx.location.capture_multi is not supported by moonring", 2) end,
}

-- Worker, process, config ----------------------------------------------------------------------

ngx.worker = {
  pid = function() return C.getpid() end,
  id = function() local id = C.mr_lua_worker_id(); return id >= 0 and id or nil end,
  count = function()
    local rt = runtime()
    local w = rt and rt.config and rt.config.workers
    if not w or w == 0 then w = tonumber(C.sysconf(84)) end -- _SC_NPROCESSORS_ONLN
    return w
  end,
  exiting = function()
    local rt = runtime()
    return rt ~= nil and rt.vm ~= nil and C.mr_lua_vm_retired(rt.vm) ~= 0
  end,
}

ngx.config = {
  subsystem = "http",
  debug = false,
  is_console = false,
  -- the versions lua-resty-* libraries check (Debian 12's nginx and ngx_http_lua_module)
  nginx_version = 1022001,
  ngx_lua_version = 10023,
  prefix = function()
    local rt = runtime()
    return (rt and rt.config and rt.config.dir or ".") .. "/"
  end,
  nginx_configure = function() return "" end,
}

-- Phase, ctx, status ----------------------------------------------------------------------------

function ngx.get_phase()
  local o = moonring._cur
  if not o then return rawget(ngx, "_loading") and "init" or "init" end
  if not o.req then return "timer" end
  return PHASES[o.phase] or "access"
end

-- The per-request compatibility state: output buffer, pending headers, ngx.var stores.
local function nstate(o)
  local s = o.ngx
  if not s then s = {}; o.ngx = s end
  return s
end

local function in_response(o) return o.phase and o.phase >= 3 end

-- Output, exit -----------------------------------------------------------------------------------

local function out_append(o, ...)
  local s = nstate(o)
  local out = s.out
  if not out then out = {}; s.out = out end
  for i = 1, select("#", ...) do out[#out + 1] = piece((select(i, ...))) end
end

function ngx.print(...)
  local o = cur("ngx.print")
  if in_response(o) then error("API disabled in the context of " .. PHASES[o.phase], 2) end
  out_append(o, ...)
  return 1
end

function ngx.say(...)
  local o = cur("ngx.say")
  if in_response(o) then error("API disabled in the context of " .. PHASES[o.phase], 2) end
  out_append(o, ...)
  out_append(o, "\n")
  return 1
end

function ngx.flush() cur("ngx.flush"); return 1 end

-- Answers the request from what ngx.say/print/status/header collected (once).
local function send_response(o, status)
  if rawget(o.req, "_responded") then return end
  local s = nstate(o)
  local body = s.out and concat(s.out) or ""
  s.out = nil
  local headers = s.headers
  s.headers = nil
  if headers then
    for k, v in pairs(headers) do if v == false then headers[k] = nil end end
  end
  local ok, err = o.req:respond(status, body, headers)
  if not ok then return nil, err end
  return true
end

local STATUS_TEXT = { [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Not Allowed", [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
  [503] = "Service Temporarily Unavailable", [504] = "Gateway Time-out" }

function ngx.exit(status)
  if type(status) ~= "number" then error("bad argument #1 to 'exit' (number expected)", 2) end
  local o = moonring._cur
  if o and o.req and not in_response(o) then
    if status >= 200 then
      local s = nstate(o)
      if not s.out and status >= 300 then
        s.out = { "<html>\r\n<head><title>" .. status .. " " .. (STATUS_TEXT[status] or "") .. "</title></head>\r\n"
          .. "<body>\r\n<center><h1>" .. status .. " " .. (STATUS_TEXT[status] or "") .. "</h1></center>\r\n"
          .. "<hr><center>moonring</center>\r\n</body>\r\n</html>\r\n" }
        s.headers = s.headers or {}
        if not s.headers["content-type"] then s.headers["content-type"] = "text/html" end
      end
      send_response(o, status)
    elseif status == ngx.ERROR then
      send_response(o, 500)
    elseif o.phase == 2 then
      send_response(o, nstate(o).status or 200)
    end
  end
  error(EXIT, 0)
end

function ngx.redirect(uri, status)
  status = status or 302
  local o = cur("ngx.redirect")
  local s = nstate(o)
  s.headers = s.headers or {}
  s.headers["location"] = uri
  s.out = s.out or {}
  send_response(o, status)
  error(EXIT, 0)
end

function ngx.eof()
  local o = cur("ngx.eof")
  send_response(o, nstate(o).status or 200)
  return 1
end

function ngx.on_abort() return nil, "lua_check_client_abort is off" end

-- ngx.arg in body filters ----------------------------------------------------------------------

local arg_mt = {
  __index = function(_, i)
    local o = cur("ngx.arg")
    local a = o.ngx and o.ngx.arg
    if not a then return nil end
    return a[i]
  end,
  __newindex = function(_, i, v)
    local o = cur("ngx.arg")
    local a = o.ngx and o.ngx.arg
    if not a then error("ngx.arg is only available in a body filter (on_body)", 2) end
    if i == 1 then
      if v == nil then v = "" elseif type(v) == "table" then v = piece(v) elseif type(v) ~= "string" then v = tostring(v) end
      a[1] = v
      a.touched = true
    elseif i == 2 then
      a[2] = v and true or false
    end
  end,
}
ngx.arg = setmetatable({}, arg_mt)

-- ngx.header --------------------------------------------------------------------------------------

-- Header names as ngx.header / ngx.req take them ("Content_Type" is content-type), memoised:
-- string.gsub does not compile, and the names a script uses are few.
local hnames, nhnames = {}, 0
local function hname(k)
  local n = hnames[k]
  if n then return n end
  if type(k) ~= "string" then error("header name must be a string", 3) end
  n = lower((gsub(k, "_", "-")))
  if nhnames >= 1024 then hnames, nhnames = {}, 0 end
  hnames[k] = n
  nhnames = nhnames + 1
  return n
end

-- Response headers set by ngx.header in on_request or a handler, applied when the response
-- (an upstream's, or a local one made without ngx.say/exit) reaches its response phase.
local function apply_pending(o)
  local s = o.ngx
  local h = s and s.headers
  if not h then return end
  s.headers = nil
  local res = o.res
  for k, v in pairs(h) do
    if v == nil or v == false then res:del_header(k) else res:set_header(k, v) end
  end
end

local header_mt = {
  __index = function(_, k)
    local o = cur("ngx.header")
    local name = hname(k)
    if in_response(o) then return o.res:header(name) end
    local h = o.ngx and o.ngx.headers
    return h and h[name] or nil
  end,
  __newindex = function(_, k, v)
    local o = cur("ngx.header")
    local name = hname(k)
    if in_response(o) then
      if o.phase > 3 then error("attempt to set ngx.header." .. name .. " after sending out response headers", 2) end
      local res = o.res
      if v == nil then res:del_header(name)
      elseif type(v) == "table" then
        res:del_header(name)
        for i = 1, #v do res:add_header(name, v[i]) end
      else
        res:set_header(name, v)
      end
      return
    end
    local s = nstate(o)
    local h = s.headers
    if not h then
      h = {}
      s.headers = h
      -- a proxied response gets them too: ask for this request's response phase
      o.pre_response = apply_pending
      C.mr_req_want_response_phase(o.req._r)
    end
    if type(v) == "table" then v = concat(v, ", ") elseif v == nil then v = false end -- false: remove it
    h[name] = v
  end,
}
ngx.header = setmetatable({}, header_mt)

-- ngx.var --------------------------------------------------------------------------------------

local VARS = {}
VARS.uri = function(req) return req.path end
VARS.document_uri = VARS.uri
VARS.args = function(req) local q = req.query; if q == "" then return nil end return q end
VARS.query_string = VARS.args
VARS.is_args = function(req) return req.query ~= "" and "?" or "" end
-- as the client sent it (nginx's $request_uri is not normalised either)
VARS.request_uri = function(req)
  C.mr_req_raw_target(req._r, ngx._pp, ngx._pn)
  return ffi.string(ngx._pp[0], ngx._pn[0])
end
VARS.request_method = function(req) return req.method end
VARS.host = function(req) return req.host end
VARS.server_name = VARS.host
VARS.remote_addr = function(req) return req.remote_addr end
VARS.realip_remote_addr = VARS.remote_addr
VARS.binary_remote_addr = function(req)
  local a = req.remote_addr
  local p = { a:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #p == 4 then return char(tonumber(p[1]), tonumber(p[2]), tonumber(p[3]), tonumber(p[4])) end
  return a
end
VARS.scheme = function(req) return req.scheme end
VARS.https = function(req) return req.scheme == "https" and "on" or "" end
VARS.server_protocol = function(req) return "HTTP/" .. (rawget(req, "version") or req.version or "1.1") end
VARS.request = function(req) return req.method .. " " .. VARS.request_uri(req) .. " " .. VARS.server_protocol(req) end
VARS.content_type = function(req) return req:header("content-type") end
VARS.content_length = function(req) return req:header("content-length") end
VARS.http_host = function(req) return req:header("host") end
VARS.pid = function() return tostring(C.getpid()) end
VARS.msec = function() return format("%.3f", moonring.now()) end
VARS.time_local = function() return os.date("%d/%b/%Y:%H:%M:%S %z") end
VARS.time_iso8601 = function() return os.date("!%Y-%m-%dT%H:%M:%S+00:00") end
VARS.hostname = function()
  local b = ffi.new("char[256]")
  C.gethostname(b, 256)
  return ffi.string(b)
end
VARS.request_body = function(req) return rawget(req, "_body") end
VARS.ssl_protocol = function(req) local t = req.tls; return t and t.protocol end
VARS.ssl_cipher = function(req) local t = req.tls; return t and t.cipher end
VARS.ssl_server_name = function(req) local t = req.tls; return t and t.sni end
VARS.ssl_session_reused = function(req) local t = req.tls; return t and (t.session_reused and "r" or ".") end
VARS.request_id = function(req, o)
  local s = nstate(o)
  if not s.request_id then s.request_id = util.random_hex128() end
  return s.request_id
end
VARS.status = function(req, o) if o.phase and o.phase >= 3 then return tostring(o.res.status) end return nil end
VARS.request_time = function(req, o)
  return format("%.3f", o.ngx_t0 and (moonring.now() - o.ngx_t0) or 0)
end

local function var_get(_, k)
  local o = cur("ngx.var")
  local req = o.req
  local f = VARS[k]
  if f then return f(req, o) end
  local vars = o.ngx_vars
  local v = vars and vars[k]
  if v ~= nil then return v end
  local s = o.ngx
  if type(k) ~= "string" then return nil end
  if sub(k, 1, 5) == "http_" then return req:header(hname(sub(k, 6))) end
  if sub(k, 1, 4) == "arg_" then return req:arg(sub(k, 5)) end
  if sub(k, 1, 7) == "cookie_" then return req:cookie(sub(k, 8)) end
  if sub(k, 1, 10) == "sent_http_" or sub(k, 1, 14) == "upstream_http_" then
    if not in_response(o) then return nil end
    return o.res:header((gsub(k:match("http_(.*)$"), "_", "-")))
  end
  local n = tonumber(k)
  if n then
    local caps = s and s.caps
    return caps and caps[n] or nil
  end
  return nil
end

local function var_set(_, k, v)
  local o = cur("ngx.var")
  if k == "args" or k == "query_string" then
    local ok, err = o.req:set_query(v == nil and "" or tostring(v))
    if not ok then error(err, 2) end
    return
  end
  if VARS[k] then error("variable \"" .. tostring(k) .. "\" not changeable", 2) end
  local vars = o.ngx_vars
  if not vars then vars = {}; o.ngx_vars = vars end
  vars[k] = v
end
ngx.var = setmetatable({}, { __index = var_get, __newindex = var_set })

-- ngx.req ------------------------------------------------------------------------------------------

local req_api = {}
ngx.req = req_api

local function normalise_header_key(t, k)
  if type(k) ~= "string" then return nil end
  local n = lower((gsub(k, "_", "-")))
  if n == k then return nil end
  return rawget(t, n)
end
local headers_mt = { __index = normalise_header_key }

-- Lists the headers: lowercase names (raw: as sent), repeated ones as lists; at most max (100,
-- 0 = all), then "truncated".
local function header_table(count_fn, at_fn, r, max, raw)
  local t, n = {}, 0
  max = max or 100
  local pp, pn, pp2, pn2 = ngx._pp, ngx._pn, ngx._pp2, ngx._pn2
  for i = 0, count_fn(r) - 1 do
    if at_fn(r, i, pp, pn, pp2, pn2) == 0 then
      if max > 0 and n >= max then setmetatable(t, headers_mt); return t, "truncated" end
      n = n + 1
      local k = ffi.string(pp[0], pn[0])
      if not raw then k = lower(k) end
      local v = ffi.string(pp2[0], pn2[0])
      local old = t[k]
      if old == nil then t[k] = v
      elseif type(old) == "table" then old[#old + 1] = v
      else t[k] = { old, v } end
    end
  end
  -- not a tail call: returning from a fast function below a root trace's frame is NYI
  if not raw then setmetatable(t, headers_mt) end
  return t
end
ngx._pp, ngx._pn = ffi.new("const char *[1]"), ffi.new("size_t[1]")
ngx._pp2, ngx._pn2 = ffi.new("const char *[1]"), ffi.new("size_t[1]")

function req_api.get_headers(max, raw)
  local o = cur("ngx.req.get_headers")
  return header_table(C.mr_req_header_count, C.mr_req_header_at, o.req._r, max, raw)
end

function req_api.set_header(name, value)
  local o = cur("ngx.req.set_header")
  name = hname(name)
  local req = o.req
  if value == nil then return req:del_header(name) end
  if type(value) == "table" then
    req:del_header(name)
    for i = 1, #value do req:add_header(name, value[i]) end
    return
  end
  req:set_header(name, value)
end

function req_api.clear_header(name)
  local o = cur("ngx.req.clear_header")
  o.req:del_header(hname(name))
end

function req_api.get_method() return cur("ngx.req.get_method").req.method end

function req_api.set_method(m)
  local o = cur("ngx.req.set_method")
  local name = METHOD_NAMES[m]
  if not name then error("unsupported HTTP method: " .. tostring(m), 2) end
  local ok, err = o.req:set_method(name)
  if not ok then error(err, 2) end
end

function req_api.get_uri_args(max)
  local o = cur("ngx.req.get_uri_args")
  return decode_args(o.req.query, max, true)
end

function req_api.set_uri_args(args)
  local o = cur("ngx.req.set_uri_args")
  if type(args) == "table" then args = ngx.encode_args(args) end
  local ok, err = o.req:set_query(tostring(args))
  if not ok then error(err, 2) end
end

function req_api.set_uri(uri, jump)
  local o = cur("ngx.req.set_uri")
  if jump then error("ngx.req.set_uri(uri, true) is not supported by moonring (routing happens once)", 2) end
  local ok, err = o.req:set_path(uri)
  if not ok then error(err, 2) end
end

function req_api.read_body()
  local o = cur("ngx.req.read_body")
  local b, err = o.req:body()
  if not b then error("ngx.req.read_body: " .. tostring(err), 2) end
end

function req_api.get_body_data()
  local o = cur("ngx.req.get_body_data")
  local b = rawget(o.req, "_body")
  if b == "" then return nil end
  return b
end

function req_api.get_body_file() return nil end
function req_api.discard_body() end

function req_api.set_body_data(data)
  local o = cur("ngx.req.set_body_data")
  local ok, err = o.req:set_body(data)
  if not ok then error(err, 2) end
end

function req_api.get_post_args(max)
  local o = cur("ngx.req.get_post_args")
  local b = rawget(o.req, "_body")
  if b == nil then return nil, "request body not read yet" end
  return decode_args(b, max, true)
end

function req_api.http_version()
  local o = cur("ngx.req.http_version")
  local v = rawget(o.req, "version") or o.req.version
  return tonumber(v) or 1.1
end

function req_api.raw_header(no_request_line)
  local o = cur("ngx.req.raw_header")
  local req = o.req
  local parts = {}
  if not no_request_line then parts[1] = VARS.request(req) .. "\r\n" end
  local t = header_table(C.mr_req_header_count, C.mr_req_header_at, req._r, 0, true)
  for k, v in pairs(t) do
    if type(v) == "table" then for _, x in ipairs(v) do parts[#parts + 1] = k .. ": " .. x .. "\r\n" end
    else parts[#parts + 1] = k .. ": " .. v .. "\r\n" end
  end
  parts[#parts + 1] = "\r\n"
  return concat(parts)
end

function req_api.start_time()
  local o = cur("ngx.req.start_time")
  return o.ngx_t0 or moonring.now()
end

function req_api.is_internal() return false end
function req_api.socket() return nil, "ngx.req.socket is not supported by moonring" end

-- ngx.resp --------------------------------------------------------------------------------------

ngx.resp = {
  get_headers = function(max, raw)
    local o = cur("ngx.resp.get_headers")
    if not in_response(o) then return setmetatable({}, headers_mt) end
    return header_table(C.mr_resp_header_count, C.mr_resp_header_at, o.res._r, max, raw)
  end,
}

-- ngx.ctx, ngx.status, ngx.headers_sent: per request, through ngx's own metatable -----------------

local dynamic = {
  ctx = function()
    local o = moonring._cur
    if not o then error("API disabled in the current context (ngx.ctx)", 3) end
    local c = o.ctx
    if not c then c = {}; o.ctx = c end
    return c
  end,
  status = function()
    local o = moonring._cur
    if not o or not o.req then return 0 end
    if in_response(o) then return o.res.status end
    local s = o.ngx
    return s and s.status or 0
  end,
  headers_sent = function()
    local o = moonring._cur
    return o ~= nil and o.phase ~= nil and o.phase >= 4
  end,
}

setmetatable(ngx, {
  __index = function(_, k)
    local f = dynamic[k]
    if f then return f() end
  end,
  __newindex = function(t, k, v)
    if k == "ctx" then
      local o = cur("ngx.ctx")
      if type(v) ~= "table" then error("ngx.ctx must be a table", 2) end
      o.ctx = v
      return
    end
    if k == "status" then
      local o = cur("ngx.status")
      if in_response(o) then o.res.status = v; return end
      nstate(o).status = v
      return
    end
    rawset(t, k, v)
  end,
})

-- Phase functions in ngx mode --------------------------------------------------------------------

local function on_error(e)
  if e == EXIT then return e end
  return debug.traceback(tostring(e), 2)
end

local function finish_call(phase, o, ok, ...)
  if ok then return ... end
  local e = ...
  if e ~= EXIT then error(e, 0) end
  return nil
end

-- Wraps a phase function of a route (moonring.runtime, with lua.ngx on): ngx.exit & co. end
-- the function; a handler's ngx.say output becomes the response; on_body honours ngx.arg.
function ngx._wrap_phase(f, phase)
  if phase == 2 then
    return function(req, ctx)
      local o = moonring._cur
      if not o.ngx_t0 then o.ngx_t0 = moonring.now() end
      local ok, status, body, headers = xpcall(f, on_error, req, ctx)
      if not ok and status ~= EXIT then error(status, 0) end
      if ok and status ~= nil then return status, body, headers end
      if not rawget(req, "_responded") then send_response(o, nstate(o).status or 200) end
      return nil
    end
  elseif phase == 4 then
    -- An explicit return value is moonring's contract (the chunk to send, nil to drop it); a
    -- function that returns nothing is an OpenResty body filter: ngx.arg[1] is what goes out.
    local function body_done(s, a, ok, ...)
      s.arg = nil
      if not ok then
        local e = ...
        if e ~= EXIT then error(e, 0) end
        return a[1]
      end
      if select("#", ...) > 0 then return (...) end
      return a[1]
    end
    return function(res, chunk, eof, ctx)
      local s = nstate(moonring._cur)
      local a = { chunk, eof }
      s.arg = a
      return body_done(s, a, xpcall(f, on_error, res, chunk, eof, ctx))
    end
  end
  return function(a, b, c, d)
    local o = moonring._cur
    -- the request's start for ngx.req.start_time / $request_time (a field: no table per request)
    if phase == 1 and o and not o.ngx_t0 then o.ngx_t0 = moonring.now() end
    return finish_call(phase, o, xpcall(f, on_error, a, b, c, d))
  end
end

ngx._EXIT = EXIT
return ngx
