-- The per-worker Lua runtime. It evaluates the config in this VM (so route handlers and inline
-- filters are live functions here), compiles each route's filter chain once, and runs phases in
-- coroutines so that every phase may yield (moonring.sleep, sockets, the HTTP client, req:body).
--
-- Protocol with the C core (src/lua/lua.c): run(index, phase, r, ...) and resume(r) return a code:
--   0 DONE       the phase finished (for on_body, the chunk to send is the second value)
--   1 YIELD      parked; the second value says on what: ("sleep", seconds), or ("io") when a
--                cosocket or the request body will wake it by arming the request's park timer
--   2 RESPONDED  the phase answered the request itself (req:respond), skip the rest
-- Errors propagate as Lua errors with a traceback (the C side turns them into a 500).
-- Request objects talk to the core through LuaJIT FFI (src/lua/api.c), so hot calls JIT-compile.
local ffi = require "ffi"
local config = require "moonring.config"
local moonring = require "moonring"
local grpc = require "moonring.grpc"

ffi.cdef [[
int mr_req_method(void *r, const char **p, size_t *n);
int mr_req_target(void *r, const char **p, size_t *n, const char **q, size_t *qn);
int mr_req_host(void *r, const char **p, size_t *n);
int mr_req_version(void *r);
int mr_req_remote_addr(void *r, const char **p, size_t *n);
int mr_req_log_line(void *r, const char *line, size_t n);
int mr_req_upstream_info(void *r, const char **addr, size_t *alen, int *status, double *times);
int mr_req_header(void *r, const char *name, size_t nlen, const char **p, size_t *n);
int mr_req_header_count(void *r);
int mr_req_header_at(void *r, int i, const char **name, size_t *nlen, const char **val, size_t *vlen);
int mr_req_set_header(void *r, const char *name, size_t nlen, const char *val, size_t vlen, int mode);
int mr_req_set_target(void *r, const char *t, size_t n);
int mr_req_set_upstream(void *r, const char *s, size_t n);
int mr_req_respond(void *r, int status, const char *body, size_t blen, const char **hdrs, int nhdrs);
int mr_resp_status(void *r);
int mr_resp_set_status(void *r, int status);
int mr_resp_header(void *r, const char *name, size_t nlen, const char **p, size_t *n);
int mr_resp_header_count(void *r);
int mr_resp_header_at(void *r, int i, const char **name, size_t *nlen, const char **val, size_t *vlen);
int mr_resp_set_header(void *r, const char *name, size_t nlen, const char *val, size_t vlen, int mode);
int mr_resp_trailer(void *r, const char *name, size_t nlen, const char **p, size_t *n);
int mr_resp_set_trailer(void *r, const char *name, size_t nlen, const char *val, size_t vlen, int mode);
void *mr_req_waker(void *r);
int mr_req_body_read(void *r, int64_t max);
int mr_req_body_get(void *r, const char **p, size_t *n);
int mr_req_tls(void *r, const char **v, int *reused);
int mr_req_set_method(void *r, const char *name, size_t n);
int mr_req_set_body(void *r, const char *s, size_t n);
]]

local C = ffi.C
local base = require "moonring.base"
local OK, AGAIN, LIMIT, DECLINED, BAD_CONTEXT = base.OK, base.AGAIN, base.LIMIT, base.DECLINED, base.BAD_CONTEXT
local ffi_string = ffi.string
local find = string.find
local ffi_cast = ffi.cast
local thread = require "moonring.thread"
local co_create, co_resume, co_yield = thread.raw.create, thread.raw.resume, thread.raw.yield
local pp = ffi.new("const char *[1]")
local pn = ffi.new("size_t[1]")
local pp2 = ffi.new("const char *[1]")
local pn2 = ffi.new("size_t[1]")

local DONE, YIELD, RESPONDED = 0, 1, 2
local PH_REQUEST, PH_HANDLER, PH_RESPONSE, PH_BODY, PH_LOG = 1, 2, 3, 4, 5
local F_REQUEST, F_RESPONSE, F_BODY, F_LOG, F_HANDLER = 1, 2, 4, 8, 16
local MODE_SET, MODE_ADD, MODE_DEL = 0, 1, 2

local M = { routes = {} }
local states = {}       -- r (lightuserdata) -> per-request state { req, res, ctx, co }

local function check_name(fn, name)
  if type(name) ~= "string" or name == "" then error(fn .. ": header name must be a non-empty string", 3) end
end

local function check_value(fn, v)
  local t = type(v)
  if t == "number" then return tostring(v) end
  if t ~= "string" then error(fn .. ": header value must be a string", 3) end
  -- plain finds JIT-compile; a pattern find would be a call out of the trace on every set
  if find(v, "\r", 1, true) or find(v, "\n", 1, true) or find(v, "\0", 1, true) then
    error(fn .. ": header value contains CR, LF or NUL", 3)
  end
  return v
end

-- lua.time_budget: the C side (src/lua/lua.c) numbers every run of a phase in budget[1] and
-- its watchdog writes the number of a run that is over budget into budget[0]. Checking both at
-- every request-API call and yield stops runaway loops that use the API even when compiled
-- (hooks never run in compiled code). Outside a server (specs, benchmarks) nothing is over.
local budget = ffi.new("int32_t[2]", -1, 0)
local budget_ms = 0

local function over_budget(level)
  error("time budget exceeded: this phase ran " .. budget_ms .. " ms without yielding (lua.time_budget)", level + 1)
end

local function live(self)
  local r = self._r
  if not r then error("the request is finished; keep what you need in ctx before yielding in on_log", 3) end
  if budget[0] == budget[1] then over_budget(3) end
  return r
end

-- Request ---------------------------------------------------------------------------------------

local req_methods, req_getters = {}, {}
local req_mt = {}

-- The target the upstream gets (normalised path, then "?" and the query), cached per request
-- object until a filter changes it.
local function target(self)
  local t = rawget(self, "_target")
  if not t then
    C.mr_req_target(live(self), pp, pn, pp2, pn2)
    t = ffi_string(pp[0], pn[0])
    if pp2[0] ~= nil then t = t .. "?" .. ffi_string(pp2[0], pn2[0]) end
    rawset(self, "_target", t)
  end
  return t
end

local VERSIONS = { [10] = "1.0", [11] = "1.1", [20] = "2" }
function req_getters.version(self) return VERSIONS[C.mr_req_version(live(self))] end
function req_getters.method(self) C.mr_req_method(live(self), pp, pn); return ffi_string(pp[0], pn[0]) end
function req_getters.path(self) local t = target(self); local q = t:find("?", 1, true); return q and t:sub(1, q - 1) or t end
function req_getters.query(self) local t = target(self); local q = t:find("?", 1, true); return q and t:sub(q + 1) or "" end
-- The host routing matched on (lowercased, without port); once a filter sets Host, the new one.
function req_getters.host(self)
  if rawget(self, "_host_set") then
    local h = self:header("host")
    return h and (h:gsub(":%d+$", "")):lower() or ""
  end
  C.mr_req_host(live(self), pp, pn)
  return ffi_string(pp[0], pn[0])
end
local tls_v = ffi.new("const char *[6]")
local tls_reused = ffi.new("int[1]")
local function opt_string(p) if p ~= nil then return ffi_string(p) end return nil end

-- Cached per request object by __index (a plain connection caches false, shown as nil).
local function tls_info(self)
  local t = rawget(self, "_tls")
  if t == nil then
    t = false
    if C.mr_req_tls(live(self), tls_v, tls_reused) == OK then
      t = { protocol = opt_string(tls_v[0]), cipher = opt_string(tls_v[1]), sni = opt_string(tls_v[2]),
            alpn = opt_string(tls_v[3]), client_subject = opt_string(tls_v[4]),
            client_fingerprint = opt_string(tls_v[5]), session_reused = tls_reused[0] ~= 0 }
    end
    rawset(self, "_tls", t)
  end
  return t
end

function req_getters.scheme(self) return tls_info(self) and "https" or "http" end
function req_getters.tls(self) return tls_info(self) or nil end
function req_getters.remote_addr(self) C.mr_req_remote_addr(live(self), pp, pn); return ffi_string(pp[0], pn[0]) end
function req_getters.params() return {} end

req_mt.__index = function(self, k)
  local m = req_methods[k]
  if m then return m end
  local g = req_getters[k]
  if g then
    local v = g(self)
    rawset(self, k, v)
    return v
  end
  return nil
end

function req_methods.header(self, name)
  check_name("req:header", name)
  if C.mr_req_header(live(self), name, #name, pp, pn) ~= OK then return nil end
  return ffi_string(pp[0], pn[0])
end

local function collect(count_fn, at_fn, r)
  local t = {}
  for i = 0, count_fn(r) - 1 do
    if at_fn(r, i, pp, pn, pp2, pn2) == OK then
      local k = ffi_string(pp[0], pn[0]):lower()
      local v = ffi_string(pp2[0], pn2[0])
      local old = t[k]
      t[k] = old and (old .. ", " .. v) or v
    end
  end
  return t
end

-- What the upstream did for this request (for log filters: on_log): the last try's server
-- address and status, and its connect, header and response times in seconds (nil when unknown).
local up_times = ffi.new("double[3]")
local up_status = ffi.new("int[1]")
function req_methods.upstream_info(self)
  if C.mr_req_upstream_info(live(self), pp, pn, up_status, up_times) ~= 0 then return nil end
  local function t(i) return up_times[i] >= 0 and up_times[i] or nil end
  return { addr = pn[0] > 0 and ffi_string(pp[0], pn[0]) or nil, status = up_status[0] > 0 and up_status[0] or nil,
           connect_time = t(0), header_time = t(1), response_time = t(2) }
end

-- Writes this request's access-log line (instead of the configured format's). false when no
-- access log is open.
function req_methods.log_line(self, line)
  if type(line) ~= "string" then error("req:log_line(line): line must be a string", 2) end
  return C.mr_req_log_line(live(self), line, #line) == 0
end

function req_methods.headers(self) return collect(C.mr_req_header_count, C.mr_req_header_at, live(self)) end

local function set_req_header(self, fn, name, value, mode)
  check_name(fn, name)
  if mode ~= MODE_DEL then value = check_value(fn, value) else value = "" end
  local rc = C.mr_req_set_header(live(self), name, #name, value, #value, mode)
  if rc ~= OK then return nil, "cannot change request headers now" end
  if #name == 4 and name:lower() == "host" then
    rawset(self, "host", nil)
    rawset(self, "_host_set", true)
  end
  return true
end

function req_methods.set_header(self, name, value) return set_req_header(self, "req:set_header", name, value, MODE_SET) end
function req_methods.add_header(self, name, value) return set_req_header(self, "req:add_header", name, value, MODE_ADD) end
function req_methods.del_header(self, name) return set_req_header(self, "req:del_header", name, nil, MODE_DEL) end

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The first value of query argument `name`, URL-decoded ("" for a bare `name`), or nil.
function req_methods.arg(self, name)
  if type(name) ~= "string" then error("req:arg(name): name must be a string", 2) end
  for k, v in self.query:gmatch("([^&=]+)=?([^&]*)") do
    if unescape(k) == name then return unescape(v) end
  end
  return nil
end

-- Every query argument, URL-decoded: name -> value, repeated names -> a list of values in order,
-- a bare name -> "" (as req:arg). At most max pairs (default 100, 0 = all); past them the
-- second value is "truncated".
function req_methods.args(self, max)
  if max ~= nil and type(max) ~= "number" then error("req:args(max): max must be a number", 2) end
  local t, n = {}, 0
  max = max or 100
  for pair in self.query:gmatch("[^&]+") do
    if max > 0 and n >= max then return t, "truncated" end
    n = n + 1
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if k ~= "" then
      v = unescape(v)
      local old = t[k]
      if old == nil then t[k] = v
      elseif type(old) == "table" then old[#old + 1] = v
      else t[k] = { old, v } end
    end
  end
  return t
end

-- The value of cookie `name` from the Cookie header(s), or nil. Values are returned as sent
-- (a quoted value keeps no quotes; nothing is URL-decoded).
function req_methods.cookie(self, name)
  if type(name) ~= "string" or name == "" then error("req:cookie(name): name must be a non-empty string", 2) end
  local cookies = rawget(self, "_cookies")
  if not cookies then
    cookies = {}
    local r = live(self)
    for i = 0, C.mr_req_header_count(r) - 1 do
      if C.mr_req_header_at(r, i, pp, pn, pp2, pn2) == OK and pn[0] == 6
        and ffi_string(pp[0], 6):lower() == "cookie" then
        for pair in ffi_string(pp2[0], pn2[0]):gmatch("[^;]+") do
          local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
          if k and cookies[k] == nil then
            if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
            cookies[k] = v
          end
        end
      end
    end
    rawset(self, "_cookies", cookies)
  end
  return cookies[name]
end

-- The method the upstream gets (GET, POST, PURGE, ...): true, or nil and an error.
function req_methods.set_method(self, m)
  if type(m) ~= "string" or not m:find("^%u+$") then error("req:set_method(method): method must be an upper-case name", 2) end
  local rc = C.mr_req_set_method(live(self), m, #m)
  if rc == BAD_CONTEXT then return nil, "cannot change the method now" end
  if rc ~= OK then return nil, "unknown method " .. m end
  rawset(self, "method", m)
  return true
end

-- Replaces the body the upstream gets (sent with Content-Length), after req:body() read it.
function req_methods.set_body(self, data)
  if type(data) ~= "string" then error("req:set_body(data): data must be a string", 2) end
  local rc = C.mr_req_set_body(live(self), data, #data)
  if rc == BAD_CONTEXT then return nil, "read the body with req:body() first (and before the request is forwarded)" end
  if rc ~= OK then return nil, "no memory" end
  rawset(self, "_body", data)
  return true
end

local function set_target(self, path, query)
  local t = query ~= "" and (path .. "?" .. query) or path
  if C.mr_req_set_target(live(self), t, #t) ~= OK then return nil, "cannot change the target now" end
  rawset(self, "_target", t)
  rawset(self, "path", path)
  rawset(self, "query", query)
  return true
end

function req_methods.set_path(self, p)
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" or p:find("[%s%z?#]") then
    error("req:set_path(path): path must be a string starting with '/' without spaces, '?' or '#'", 2)
  end
  return set_target(self, p, self.query)
end

function req_methods.set_query(self, q)
  if type(q) ~= "string" or q:find("[%s%z#]") then error("req:set_query(query): query must be a string without spaces or '#'", 2) end
  if q:sub(1, 1) == "?" then q = q:sub(2) end
  return set_target(self, self.path, q)
end

function req_methods.set_upstream(self, name)
  if type(name) ~= "string" then error("req:set_upstream(name): name must be a string", 2) end
  local rc = C.mr_req_set_upstream(live(self), name, #name)
  if rc == OK then return true end
  if rc == DECLINED then return nil, "unknown upstream '" .. name .. "' (declare it in upstreams, or use a host:port)" end
  return nil, "cannot set the upstream now"
end

-- The whole request body (up to lua.max_body), read while the phase is parked; "" without one.
-- nil, "too large" leaves what was read buffered: the request can still be proxied whole.
local DEFAULT_MAX_BODY = 1024 * 1024

function req_methods.body(self)
  local r = live(self)
  local b = rawget(self, "_body")
  if b then return b end
  local l = M.config and M.config.lua
  local max = l and l.max_body or DEFAULT_MAX_BODY
  if max > 2 ^ 30 then max = 2 ^ 30 end -- one buffer, and a span past it, must stay below 2 GiB
  local rc = C.mr_req_body_read(r, max)
  -- a wake-up may be meant for another coroutine of this request (moonring.thread): ask again
  while rc == AGAIN do
    moonring._yield("io")
    rc = C.mr_req_body_read(live(self), max)
  end
  if rc == OK then
    C.mr_req_body_get(r, pp, pn)
    b = ffi_string(pp[0], pn[0])
    rawset(self, "_body", b)
    return b
  end
  if rc == LIMIT then return nil, "too large" end
  if rc == BAD_CONTEXT then return nil, "the request body is gone (already forwarded or discarded); read it in on_request or the handler" end
  return nil, "the request body could not be read (" .. rc .. ")"
end

local hdr_buf = ffi.new("const char *[128]")

function req_methods.respond(self, status, body, headers)
  if type(status) ~= "number" or status < 100 or status > 999 then
    error("req:respond(status, body, headers): status must be a number from 100 to 999", 2)
  end
  if body == nil then body = ""
  elseif type(body) == "number" then body = tostring(body)
  elseif type(body) ~= "string" then
    error("req:respond(status, body, headers): body must be a string, got " .. type(body), 2)
  end
  local n, keep = 0, {}
  if headers ~= nil then
    if type(headers) ~= "table" then error("req:respond: headers must be a table", 2) end
    for k, v in pairs(headers) do
      if n >= 64 then error("req:respond: too many headers", 2) end
      if type(k) ~= "string" then k = tostring(k) end
      if type(v) ~= "string" then v = tostring(v) end
      -- plain finds compile; a pattern find leaves the trace
      if find(k, "\r", 1, true) or find(k, "\n", 1, true) or find(k, "\0", 1, true) or find(k, ":", 1, true)
        or find(k, " ", 1, true) or find(v, "\r", 1, true) or find(v, "\n", 1, true) or find(v, "\0", 1, true) then
        error("req:respond: invalid header " .. k, 2)
      end
      keep[#keep + 1] = k
      keep[#keep + 1] = v
      hdr_buf[2 * n] = k
      hdr_buf[2 * n + 1] = v
      n = n + 1
    end
  end
  local rc = C.mr_req_respond(live(self), status, body, #body, hdr_buf, n)
  if rc == BAD_CONTEXT then return nil, "a response was already sent" end
  if rc ~= OK then error("req:respond failed (" .. rc .. ")", 2) end
  rawset(self, "_responded", true)
  return true
end

-- gRPC's Trailers-Only answer: HTTP 200, content-type application/grpc, grpc-status and a
-- percent-encoded grpc-message; the core sends it as one HEADERS frame that ends an HTTP/2
-- stream. code: 0-16 or a name ("UNAUTHENTICATED"), see moonring.grpc.
function req_methods.grpc_error(self, code, message)
  local c = grpc.code(code)
  if not c then error("req:grpc_error(code, message): code must be 0-16 or a status name, got " .. tostring(code), 2) end
  local h = { ["content-type"] = "application/grpc", ["grpc-status"] = tostring(c) }
  if message ~= nil and message ~= "" then h["grpc-message"] = grpc.encode_message(message) end
  return self:respond(200, "", h)
end

-- Response --------------------------------------------------------------------------------------

local res_methods = {}
local res_mt = {}

res_mt.__index = function(self, k)
  if k == "status" then return C.mr_resp_status(live(self)) end
  return res_methods[k]
end

res_mt.__newindex = function(self, k, v)
  if k == "status" then
    if type(v) ~= "number" or v < 200 or v > 999 then error("res.status must be a number from 200 to 999", 2) end
    if C.mr_resp_set_status(live(self), v) ~= OK then error("res.status cannot change after the head was sent", 2) end
    return
  end
  rawset(self, k, v)
end

function res_methods.header(self, name)
  check_name("res:header", name)
  if C.mr_resp_header(live(self), name, #name, pp, pn) ~= OK then return nil end
  return ffi_string(pp[0], pn[0])
end

function res_methods.headers(self) return collect(C.mr_resp_header_count, C.mr_resp_header_at, live(self)) end

local function set_res_header(self, fn, name, value, mode)
  check_name(fn, name)
  if mode ~= MODE_DEL then value = check_value(fn, value) else value = "" end
  if C.mr_resp_set_header(live(self), name, #name, value, #value, mode) ~= OK then
    return nil, "cannot change response headers now"
  end
  return true
end

function res_methods.set_header(self, name, value) return set_res_header(self, "res:set_header", name, value, MODE_SET) end
function res_methods.add_header(self, name, value) return set_res_header(self, "res:add_header", name, value, MODE_ADD) end
function res_methods.del_header(self, name) return set_res_header(self, "res:del_header", name, nil, MODE_DEL) end

-- Trailer fields: the upstream's are readable once its body ended (the last on_body, eof = true);
-- set ones go after the body where the client's protocol carries them (HTTP/2, chunked HTTP/1.1).
function res_methods.trailer(self, name)
  check_name("res:trailer", name)
  if C.mr_resp_trailer(live(self), name, #name, pp, pn) ~= OK then return nil end
  return ffi_string(pp[0], pn[0])
end

function res_methods.set_trailer(self, name, value)
  check_name("res:set_trailer", name)
  value = check_value("res:set_trailer", value)
  if C.mr_resp_set_trailer(live(self), name, #name, value, #value, MODE_SET) ~= OK then
    return nil, "cannot change trailers now"
  end
  return true
end

-- Buffers the response body in on_body: returns nil while it buffers (return nil: the chunk is
-- kept), the whole body at eof (return it, changed or not), or false, "too large" and the data
-- to send unchanged when the body grows past max (default lua.max_body; the rest of the body
-- then passes through: every later call returns false, "too large", chunk).
function res_methods.body(self, chunk, eof, max)
  if type(chunk) ~= "string" then error("res:body(chunk, eof, max): chunk must be the on_body chunk", 2) end
  local b = rawget(self, "_rbody")
  if b == false then return false, "too large", chunk end
  if not b then b = { n = 0 }; rawset(self, "_rbody", b) end
  local l = M.config and M.config.lua
  max = max or (l and l.max_body) or DEFAULT_MAX_BODY
  b[#b + 1] = chunk
  b.n = b.n + #chunk
  if b.n > max then
    rawset(self, "_rbody", false)
    return false, "too large", table.concat(b)
  end
  if not eof then return nil end
  rawset(self, "_rbody", nil)
  return table.concat(b)
end

-- on_body helper: returns what on_body should return so that the client gets fn(whole body),
-- or the body unchanged when it is larger than max.
function res_methods.rewrite(self, chunk, eof, fn, max)
  if type(fn) ~= "function" then error("res:rewrite(chunk, eof, fn, max): fn must be a function", 2) end
  local body, err, pass = res_methods.body(self, chunk, eof, max)
  if body == nil then return nil end
  if body == false then return pass end
  local out = fn(body)
  if out ~= nil and type(out) ~= "string" then error("res:rewrite: fn must return a string", 2) end
  return out or body
end

-- Chains ----------------------------------------------------------------------------------------

-- Builds a route's phase lists from its filters, which the config loader already resolved and
-- checked (route.chain: { filter = table, module = name or nil } per entry; see
-- lua/moonring/config.lua), so nothing here can fail on a user's mistake.
local function compile_route(r)
  local chain = { route = r, req = {}, resp = {}, body = {}, log = {}, flags = 0,
                  -- who each phase function belongs to, for error messages (see step)
                  names = { {}, {}, {}, {}, {} } }
  local n = chain.names
  -- lua.ngx: phase functions are wrapped so that ngx.exit & co. work (moonring.ngx)
  local w = M.phase_wrap or function(fn) return fn end
  for i, e in ipairs(r.chain or {}) do
    local f = e.filter
    local name = "filter " .. r.name .. ".filters[" .. i .. "]" .. (e.module and (" (" .. e.module .. ")") or "")
    if f.on_request then chain.req[#chain.req + 1] = w(f.on_request, 1); n[1][#chain.req] = name end
    if f.on_response then -- reverse: unwinding
      table.insert(chain.resp, 1, w(f.on_response, 3))
      table.insert(n[3], 1, name)
    end
    if f.on_body then chain.body[#chain.body + 1] = w(f.on_body, 4); n[4][#chain.body] = name end
    if f.on_log then chain.log[#chain.log + 1] = w(f.on_log, 5); n[5][#chain.log] = name end
  end
  if r.handler then chain.handler = w(r.handler, 2) end
  local flags = 0
  if #chain.req > 0 then flags = flags + F_REQUEST end
  if #chain.resp > 0 then flags = flags + F_RESPONSE end
  if #chain.body > 0 then flags = flags + F_BODY end
  if #chain.log > 0 then flags = flags + F_LOG end
  if r.handler then flags = flags + F_HANDLER end
  chain.flags = flags
  return chain
end

-- Routing in Lua, used when a route has headers/pattern/match predicates or the config has a
-- `router`; otherwise the core matches routes in C. Compiled once per VM (moonring.router).
local router = require "moonring.router"

local function new_state(r, chain)
  local p = ffi_cast("void *", r)
  -- waker: what a cosocket arms to resume this request's parked phase (see moonring.tcp)
  local st = { ctx = {}, chain = chain, waker = C.mr_req_waker(p) }
  st.req = setmetatable({ _r = p }, req_mt)
  st.res = setmetatable({ _r = p }, res_mt)
  states[r] = st
  return st
end

-- The req/res objects for a request pointer, outside any phase: for bench/micro/lua_api.lua and
-- FFI specs over a test client (src/lua/lua_test_api.h). Call M.finish(r) when done.
function M._state(r) return states[r] or new_state(r, nil) end

-- Returns the 1-based index of the matching route, or 0 (404).
function M.route(r)
  local st = states[r] or new_state(r, nil)
  local req = st.req
  if M.router then
    local v = M.router(req)
    if v == nil or v == false then return 0 end
    local i = type(v) == "number" and v or M.route_names[v]
    if not i or not M.routes[i] then
      error("router returned " .. tostring(v) .. ", which names no entry of routes", 0)
    end
    return i
  end
  return M.match(req)
end

-- Builds every route's chain from a loaded config (the config loader, src/config/config.c,
-- runs it after validation; filters were resolved and checked by the load itself).
function M.check(cfg)
  for _, r in ipairs(cfg.routes or {}) do compile_route(r) end
  return true
end

function M.init(file, vm, budget_ptr, ms)
  if vm then M.vm = ffi_cast("void *", vm) end
  if budget_ptr then
    budget = ffi.cast("int32_t *", budget_ptr)
    budget_ms = ms
  end
  local cfg, err = config.load(file)
  if not cfg then error(err, 0) end
  M.config = cfg
  if cfg.lua and cfg.lua.ngx then M.phase_wrap = require("moonring.ngx")._wrap_phase end
  local flags = {}
  M.route_names = {}
  M.router = cfg.router
  for i, r in ipairs(cfg.routes or {}) do
    local chain = compile_route(r)
    M.routes[i] = chain
    flags[i] = chain.flags
    M.route_names[r.name] = i
  end
  M.match = router.compile(cfg.routes or {})
  return flags
end

-- Phase bodies (run inside a coroutine) ---------------------------------------------------------

local function run_request(st, chain)
  local req, ctx = st.req, st.ctx
  for i = 1, #chain.req do
    st.fi = i
    chain.req[i](req, ctx)
    if rawget(req, "_responded") then return RESPONDED end
  end
  return DONE
end

local function run_handler(st, chain)
  local req = st.req
  st.fi = nil
  local status, body, headers = chain.handler(req, st.ctx)
  if not rawget(req, "_responded") then
    if type(status) == "number" then
      req:respond(status, body, headers)
    elseif type(status) == "string" then
      req:respond(200, status, body)
    else
      error("the handler of " .. chain.route.name .. " returned without a response", 0)
    end
  end
  return RESPONDED
end

local function run_response(st, chain)
  local res, ctx = st.res, st.ctx
  -- the ngx layer's response headers set before the response existed (ngx.header in access)
  local pre = st.pre_response
  if pre then st.pre_response = nil; pre(st) end
  for i = 1, #chain.resp do
    st.fi = i
    chain.resp[i](res, ctx)
  end
  return DONE
end

local function run_body(st, chain, chunk, eof)
  local res, ctx = st.res, st.ctx
  for i = 1, #chain.body do
    st.fi = i
    local out = chain.body[i](res, chunk, eof, ctx)
    if out ~= nil and type(out) ~= "string" then
      error("on_body must return a string or nil, got " .. type(out), 0)
    end
    chunk = out
    if chunk == nil then break end
  end
  return DONE, chunk
end

local function run_log(st, chain)
  local req, res, ctx = st.req, st.res, st.ctx
  for i = 1, #chain.log do
    st.fi = i
    chain.log[i](req, res, ctx)
  end
  return DONE
end

local bodies = { run_request, run_handler, run_response, run_body, run_log }

-- Phases run in pooled coroutines: creating a coroutine per phase (a new lua_State and stack, then
-- garbage) was the largest part of a short chain's cost. A pooled coroutine runs `worker`, which
-- runs one phase body and then yields FINISHED with the body's results, waiting for the next.
-- A phase that yields on its own (moonring.sleep) yields something else, so the two are told
-- apart. A coroutine whose phase raised an error is dead and is not returned to the pool; one
-- parked in a request that goes away is simply dropped.
-- The body's results travel in fin_code/fin_out (one phase runs at a time per VM) and the
-- worker drops its arguments before parking, so that a pooled coroutine keeps nothing of its
-- last request (state, ctx, a body chunk) alive.
local FINISHED = {}
M.FINISHED = FINISHED -- a detached on_log (moonring.timer) ends on it too
local POOL_MAX = 256
local pool, npool = {}, 0
local fin_code, fin_out

local function worker(body, st, chain, chunk, eof)
  while true do
    local c, o = body(st, chain, chunk, eof)
    if st.threads then thread.drain(st) end -- the phase ends when its light threads did
    fin_code, fin_out = c, o
    c, o = nil, nil
    body, st, chain, chunk, eof = nil, nil, nil, nil, nil
    body, st, chain, chunk, eof = co_yield(FINISHED)
  end
end

local function step(st, ok, code, a, b)
  if not ok then
    local tb = debug.traceback(st.co, tostring(code))
    st.co = nil
    -- Name the filter (or the handler) that failed: the core logs the route and the phase.
    local names = st.chain and st.phase and st.chain.names[st.phase]
    local who = st.phase == 2 and "handler" or (names and st.fi and names[st.fi])
    error(who and (who .. ": " .. tb) or tb, 0)
  end
  if code == FINISHED then
    if npool < POOL_MAX then
      npool = npool + 1
      pool[npool] = st.co
    end
    st.co = nil
    local c, o = fin_code, fin_out
    fin_code, fin_out = nil, nil
    return c, o
  end
  -- code/a are what the phase yielded: (what, arg)
  return YIELD, code, a
end

function M.run(index, phase, r, chunk, eof)
  local chain = M.routes[index]
  -- A cdata pointer, not the lightuserdata, reaches the FFI API: converting lightuserdata to
  -- void* is NYI in the JIT (GC64), which would abort every trace through the request API.
  local st = states[r] or new_state(r, chain)
  st.chain = chain
  st.phase = phase
  local co
  if npool > 0 then
    co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    co = co_create(worker)
  end
  st.co = co
  moonring._cur = st
  local ok, code, a, b = co_resume(co, bodies[phase], st, chain, chunk, eof)
  moonring._cur = nil
  return step(st, ok, code, a, b)
end

function M.resume(r, ...)
  local st = states[r]
  if not st or not st.co then error("resume: no parked phase for this request", 0) end
  moonring._cur = st
  local ok, code, a, b = co_resume(st.co, ...)
  moonring._cur = nil
  return step(st, ok, code, a, b)
end

-- The request is over (or its client went away): forget its state. A parked log phase keeps
-- running detached; its req/res can no longer reach the core.
function M.finish(r)
  local st = states[r]
  if not st then return end
  states[r] = nil
  st.req._r = nil
  st.res._r = nil
  st.co = nil
  if st.socks then moonring._release(st) end
  if st.sema_waits then require("moonring.semaphore")._forget(st) end
end

-- A parked on_log phase becomes a fiber (src/lua/lua.c mr_lua_detach) so the request can end.
function M.adopt(r, key, waker)
  local st = states[r]
  if not st or not st.co then error("adopt: no parked phase for this request", 0) end
  states[r] = nil
  st.req._r = nil
  st.res._r = nil
  st.waker = ffi_cast("void *", waker)
  moonring._rewake(st)
  return st
end

-- Functions yielding to the core ----------------------------------------------------------------

-- moonring._yield lives in moonring.thread: it parks the entry coroutine, a light thread or a
-- coroutine of the script's own (coroutine.* are wrapped here, as OpenResty does, so that
-- libraries that read bodies in coroutines of their own work).
thread.check_budget = function() if budget[0] == budget[1] then over_budget(4) end end
coroutine.resume = thread.resume
coroutine.wrap = thread.wrap
coroutine.yield = thread.co_yield

return M
