-- moonring.testing: run filters in plain LuaJIT (busted), without a server.
--
--   local testing = require "moonring.testing"
--   local req = testing.request{ method = "GET", path = "/x", headers = { ["X-Api-Key"] = "k" } }
--   local res = testing.response{ status = 200, body = "hello" }
--   local r = testing.run({ "my.filter", { some = "option" } }, req, res)
--   assert.same(200, r.status)
--
-- Requiring this module makes `require("moonring")` usable outside the server: if the real
-- module's now() cannot run here it is replaced by the wall clock, log() is captured in
-- testing.logs, sleep() advances a fake clock, and moonring.shared holds the dicts made by
-- testing.shared_dict(name).
local util = require "moonring.filters._util"

local format, find, gsub, lower, sub = string.format, string.find, string.gsub, string.lower, string.sub
local concat, sort = table.concat, table.sort

local testing = { logs = {} }

-- ------------------------------------------------------------------ the moonring module

local function moonring()
  local m = package.loaded.moonring
  if type(m) ~= "table" then
    local ok, mod = pcall(require, "moonring")
    if ok and type(mod) == "table" then m = mod else m = {}; package.loaded.moonring = m end
  end
  return m
end

local LEVELS = { debug = true, info = true, notice = true, warn = true, error = true }

local function check_sleep(s)
  if type(s) ~= "number" or s < 0 or s ~= s then
    error("moonring.sleep(seconds): seconds must be a non-negative number", 3)
  end
end

do
  local m = moonring()
  if not (type(m.now) == "function" and pcall(m.now)) then rawset(m, "now", util.realtime) end
  rawset(m, "log", function(level, ...)
    if not LEVELS[level] then
      error("moonring.log(level, ...): level must be one of debug, info, notice, warn, error", 2)
    end
    local parts = { ... }
    for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
    testing.logs[#testing.logs + 1] = { level = level, message = concat(parts, " ") }
  end)
  rawset(m, "sleep", function(s) check_sleep(s) end)
  local ok, shared = pcall(function() return m.shared end)
  if not ok or type(shared) ~= "table" then rawset(m, "shared", {}) end
end

-- ------------------------------------------------------------------ clock

local Clock = {}
Clock.__index = Clock

function Clock:now() return self.t end
function Clock:set(t) self.t = t; return self end
function Clock:advance(dt) self.t = self.t + dt; return self end
function Clock:restore()
  local m = moonring()
  rawset(m, "now", self._now)
  rawset(m, "sleep", self._sleep)
end

-- Freezes moonring.now() at `t` (default 1700000000). moonring.sleep(s) advances it.
-- Returns a clock with :now(), :set(t), :advance(dt) and :restore().
function testing.clock(t)
  if t ~= nil and type(t) ~= "number" then error("testing.clock(t): t must be a number", 2) end
  local m = moonring()
  local c = setmetatable({ t = t or 1700000000, _now = rawget(m, "now"), _sleep = rawget(m, "sleep") }, Clock)
  rawset(m, "now", function() return c.t end)
  rawset(m, "sleep", function(s) check_sleep(s); c.t = c.t + s end)
  return c
end

-- ------------------------------------------------------------------ shared dict

local Dict = {}
Dict.__index = Dict

local function check_self(self)
  if getmetatable(self) ~= Dict then error("shared dict methods must be called with ':'", 3) end
end

local function check_key(key)
  if key == nil then return nil, "nil key" end
  if type(key) ~= "string" then key = tostring(key) end
  if key == "" then return nil, "empty key" end
  if #key > 65535 then return nil, "key too long" end
  return key
end

local valid_value = { string = true, number = true, boolean = true }

function Dict:_now() return self._clock and self._clock() or util.now() end

function Dict:_live(key)
  local e = self._data[key]
  if e and e.exp ~= 0 and e.exp <= self:_now() then return nil, e end
  return e
end

function Dict:get(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local e = self:_live(k)
  if not e then return nil end
  if e.list then return nil, "value is a list" end
  if e.flags ~= 0 then return e.value, e.flags end
  return e.value
end

function Dict:get_stale(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local e, stale = self:_live(k)
  if e then return e.value, e.flags ~= 0 and e.flags or nil, false end
  if stale then return stale.value, stale.flags ~= 0 and stale.flags or nil, true end
  return nil
end

local function store(self, mode, key, value, exptime, flags)
  check_self(self)
  local k, err = check_key(key)
  if not k then return false, err, false end
  if exptime ~= nil and (type(exptime) ~= "number" or exptime < 0) then
    error("bad \"exptime\" argument", 3)
  end
  if value ~= nil and not valid_value[type(value)] then return false, "bad value type", false end
  local live = self:_live(k)
  if mode == "add" and live then return false, "exists", false end
  if mode == "replace" and not live then return false, "not found", false end
  if value == nil then
    self._data[k] = nil
  else
    local exp = (exptime and exptime > 0) and self:_now() + exptime or 0
    self._data[k] = { value = value, exp = exp, flags = flags or 0 }
  end
  return true, nil, false
end

function Dict:set(key, value, exptime, flags) return store(self, "set", key, value, exptime, flags) end
function Dict:safe_set(key, value, exptime, flags) return store(self, "set", key, value, exptime, flags) end
function Dict:add(key, value, exptime, flags) return store(self, "add", key, value, exptime, flags) end
function Dict:safe_add(key, value, exptime, flags) return store(self, "add", key, value, exptime, flags) end
function Dict:replace(key, value, exptime, flags) return store(self, "replace", key, value, exptime, flags) end

function Dict:delete(key)
  check_self(self)
  local k = check_key(key)
  if k then self._data[k] = nil end
end

function Dict:incr(key, value, init, init_ttl)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(value) ~= "number" then error("bad \"value\" argument: number expected", 2) end
  if init ~= nil and type(init) ~= "number" then error("bad \"init\" argument: number expected", 2) end
  if init_ttl ~= nil then
    if init == nil then error("bad \"init_ttl\" argument: \"init\" is required", 2) end
    if type(init_ttl) ~= "number" or init_ttl < 0 then error("bad \"init_ttl\" argument", 2) end
  end
  local e = self:_live(k)
  if not e then
    if init == nil then return nil, "not found" end
    local exp = (init_ttl and init_ttl > 0) and self:_now() + init_ttl or 0
    self._data[k] = { value = init + value, exp = exp, flags = 0 }
    return init + value
  end
  if type(e.value) ~= "number" then return nil, "not a number" end
  e.value = e.value + value
  return e.value
end

function Dict:ttl(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local e = self:_live(k)
  if not e then return nil, "not found" end
  if e.exp == 0 then return 0 end
  return e.exp - self:_now()
end

function Dict:expire(key, exptime)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(exptime) ~= "number" or exptime < 0 then error("bad \"exptime\" argument", 2) end
  local e = self:_live(k)
  if not e then return nil, "not found" end
  e.exp = exptime > 0 and self:_now() + exptime or 0
  return true
end

function Dict:flush_all()
  check_self(self)
  for _, e in pairs(self._data) do e.exp = -1 end
end

function Dict:flush_expired(max)
  check_self(self)
  local n, now = 0, self:_now()
  for k, e in pairs(self._data) do
    if e.exp ~= 0 and e.exp <= now then
      self._data[k] = nil
      n = n + 1
      if max and max > 0 and n >= max then break end
    end
  end
  return n
end

local function dict_push(self, key, value, left)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(value) ~= "string" and type(value) ~= "number" then return nil, "bad value type" end
  local e = self:_live(k)
  if e and e.list == nil then return nil, "value not a list" end
  if not e then e = { list = {}, exp = 0, flags = 0 }; self._data[k] = e end
  if left then table.insert(e.list, 1, value) else e.list[#e.list + 1] = value end
  return #e.list
end

local function dict_pop(self, key, left)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local e = self:_live(k)
  if not e then return nil end
  if e.list == nil then return nil, "value not a list" end
  local v = table.remove(e.list, left and 1 or #e.list)
  if #e.list == 0 then self._data[k] = nil end
  return v
end

function Dict:lpush(key, value) return dict_push(self, key, value, true) end
function Dict:rpush(key, value) return dict_push(self, key, value, false) end
function Dict:lpop(key) return dict_pop(self, key, true) end
function Dict:rpop(key) return dict_pop(self, key, false) end
function Dict:llen(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local e = self:_live(k)
  if not e then return 0 end
  if e.list == nil then return nil, "value not a list" end
  return #e.list
end

function Dict:get_keys(max)
  check_self(self)
  max = max or 1024
  local keys = {}
  for k in pairs(self._data) do
    if self:_live(k) then keys[#keys + 1] = k end
  end
  sort(keys)
  if max > 0 then for i = #keys, max + 1, -1 do keys[i] = nil end end
  return keys
end

-- An in-memory dict with ngx.shared.DICT semantics (get, get_stale, set, safe_set, add,
-- safe_add, replace, incr, delete, ttl, expire, flush_all, flush_expired, get_keys, lpush,
-- rpush, lpop, rpop, llen).
-- `opts` is a name or { name = , clock = function() return seconds end }; expiry uses the
-- clock, by default moonring.now() (so testing.clock controls it). A named dict is also
-- registered as moonring.shared[name], where filters configured with `dict = name` find it.
function testing.shared_dict(opts)
  if type(opts) == "string" then opts = { name = opts } end
  opts = opts or {}
  if type(opts) ~= "table" then error("testing.shared_dict(opts): opts must be a name or a table", 2) end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then
    error("testing.shared_dict(opts): opts.clock must be a function", 2)
  end
  local d = setmetatable({ _data = {}, _clock = opts.clock, name = opts.name }, Dict)
  if opts.name then rawset(moonring().shared, opts.name, d) end
  return d
end

-- ------------------------------------------------------------------ headers (shared by req and res)

local Headers = {}

local function check_name(who, name)
  if type(name) ~= "string" or not util.valid_header_name(name) then
    error(format("%s: name must be a header name string, got %s", who, util.describe(name)), 3)
  end
  return lower(name)
end

local function check_values(who, v)
  local t = type(v)
  if t == "number" then return { tostring(v) } end
  if t == "string" then
    if not util.valid_header_value(v) then error(who .. ": value must not contain CR, LF or NUL", 3) end
    return { v }
  end
  if t == "table" and #v > 0 then
    local out = {}
    for i = 1, #v do out[i] = check_values(who, v[i])[1] end
    return out
  end
  error(format("%s: value must be a string, a number or a list of strings, got %s", who, util.describe(v)), 3)
end

local function init_headers(obj, headers, who)
  obj._h = {}
  if headers == nil then return end
  if type(headers) ~= "table" then error(who .. ": headers must be a table", 3) end
  local names = {}
  for k in pairs(headers) do
    if type(k) ~= "string" then error(who .. ": header names must be strings", 3) end
    names[#names + 1] = k
  end
  sort(names)
  for _, k in ipairs(names) do
    local lk = check_name(who, k)
    local list = obj._h[lk] or {}
    for _, v in ipairs(check_values(who, headers[k])) do list[#list + 1] = v end
    obj._h[lk] = list
  end
end

function Headers.header(self, name)
  local l = self._h[check_name("header(name)", name)]
  return l and l[1]
end

function Headers.headers(self)
  local out = {}
  for k, l in pairs(self._h) do out[k] = concat(l, ", ") end
  return out
end

function Headers.set_header(self, name, value)
  self._h[check_name("set_header(name, value)", name)] = check_values("set_header(name, value)", value)
end

function Headers.add_header(self, name, value)
  local k = check_name("add_header(name, value)", name)
  local l = self._h[k] or {}
  for _, v in ipairs(check_values("add_header(name, value)", value)) do l[#l + 1] = v end
  self._h[k] = l
end

function Headers.del_header(self, name)
  self._h[check_name("del_header(name)", name)] = nil
end

-- ------------------------------------------------------------------ request

local Request = {}
Request.__index = Request
for k, f in pairs(Headers) do Request[k] = f end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function escape(s)
  return (gsub(s, "[^%w%-._~]", function(c) return format("%%%02X", string.byte(c)) end))
end

local function check_string(who, field, v, default)
  if v == nil then return default end
  if type(v) ~= "string" then error(format("%s: %s must be a string, got %s", who, field, util.describe(v)), 3) end
  return v
end

-- A mock request with the whole request API. `opts`: method ("GET"), path ("/", may carry
-- "?query"), query (""), host (from the Host header, else "localhost"), scheme ("http"),
-- remote_addr ("127.0.0.1"), headers (name → value or list of values), body (""), params ({}).
-- After a run: req.responded, req.response = { status, body, headers }, req.upstream.
function testing.request(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("testing.request(opts): opts must be a table", 2) end
  local who = "testing.request"
  local req = setmetatable({}, Request)
  req.method = check_string(who, "method", opts.method, "GET"):upper()
  local path = check_string(who, "path", opts.path, "/")
  local q = find(path, "?", 1, true)
  local query = check_string(who, "query", opts.query, nil)
  if q then
    if query == nil then query = sub(path, q + 1) end
    path = sub(path, 1, q - 1)
  end
  if sub(path, 1, 1) ~= "/" then error(who .. ": path must start with '/'", 2) end
  req.path, req.query = path, gsub(query or "", "^%?", "")
  init_headers(req, opts.headers, who)
  local host_hdr = req._h.host and req._h.host[1]
  req.host = check_string(who, "host", opts.host, nil) or (host_hdr and gsub(host_hdr, ":%d+$", "")) or "localhost"
  if not host_hdr then req._h.host = { req.host } end
  req.scheme = check_string(who, "scheme", opts.scheme, "http")
  req.remote_addr = check_string(who, "remote_addr", opts.remote_addr, "127.0.0.1")
  if opts.tls ~= nil and type(opts.tls) ~= "table" then error(who .. ": tls must be a table or nil", 2) end
  req.tls = opts.tls -- as the server's req.tls: protocol, cipher, sni, alpn, session_reused, client_*
  req.params = opts.params or {}
  req._body = check_string(who, "body", opts.body, "")
  req.responded = false
  return req
end

function Request:arg(name)
  if type(name) ~= "string" then error("req:arg(name): name must be a string", 2) end
  for pair in string.gmatch(self.query, "[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if unescape(k) == name then return unescape(v) end
  end
  return nil
end

function Request:args(max)
  local t, n = {}, 0
  max = max or 100
  for pair in string.gmatch(self.query, "[^&]+") do
    if max > 0 and n >= max then return t, "truncated" end
    n = n + 1
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if k ~= "" then
      v = unescape(v)
      local old = t[k]
      if old == nil then t[k] = v elseif type(old) == "table" then old[#old + 1] = v else t[k] = { old, v } end
    end
  end
  return t
end

function Request:cookie(name)
  if type(name) ~= "string" or name == "" then error("req:cookie(name): name must be a non-empty string", 2) end
  for _, line in ipairs(self._h.cookie or {}) do
    for pair in line:gmatch("[^;]+") do
      local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
      if k == name then
        if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
        return v
      end
    end
  end
  return nil
end

function Request:set_method(m)
  if type(m) ~= "string" or not m:find("^%u+$") then error("req:set_method(method): method must be an upper-case name", 2) end
  self.method = m
  return true
end

function Request:set_body(data)
  if type(data) ~= "string" then error("req:set_body(data): data must be a string", 2) end
  self._body = data
  return true
end

function Request:set_path(p)
  if type(p) ~= "string" or sub(p, 1, 1) ~= "/" then
    error("req:set_path(p): p must be a string starting with '/', got " .. util.describe(p), 2)
  end
  if find(p, "[%s%z?#]") then error("req:set_path(p): p must not contain whitespace, '?' or '#' (use set_query)", 2) end
  self.path = p
end

function Request:set_query(q)
  if q == nil then self.query = ""; return end
  if type(q) == "table" then
    local keys, parts = {}, {}
    for k in pairs(q) do keys[#keys + 1] = tostring(k) end
    sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = escape(k) .. "=" .. escape(tostring(q[k])) end
    self.query = concat(parts, "&")
    return
  end
  if type(q) ~= "string" then error("req:set_query(q): q must be a string or a table, got " .. util.describe(q), 2) end
  if find(q, "[%s%z#]") then error("req:set_query(q): q must not contain whitespace or '#'", 2) end
  self.query = gsub(q, "^%?", "")
end

function Request:set_upstream(name)
  if type(name) ~= "string" or name == "" then
    error("req:set_upstream(name): name must be an upstream name or \"host:port\", got " .. util.describe(name), 2)
  end
  self.upstream = name
end

function Request:body()
  return self._body
end

function Request:respond(status, body, headers)
  if type(status) ~= "number" or status < 100 or status > 999 or status % 1 ~= 0 then
    error("req:respond(status, body, headers): status must be a number (100-999), got " .. util.describe(status), 2)
  end
  if body ~= nil and type(body) ~= "string" then body = tostring(body) end
  if headers ~= nil and type(headers) ~= "table" then
    error("req:respond(status, body, headers): headers must be a table", 2)
  end
  if self.responded then return nil, "response already sent" end
  local copy = {}
  for k, v in pairs(headers or {}) do
    k = tostring(k)
    if not util.valid_header_name(k) then error("req:respond: invalid header " .. k, 2) end
    copy[k] = v
  end
  self.responded = true
  self.response = { status = status, body = body or "", headers = copy }
  return true
end

-- As in the server: gRPC's Trailers-Only answer (moonring.grpc).
function Request:grpc_error(code, message)
  local grpc = require "moonring.grpc"
  local c = grpc.code(code)
  if not c then error("req:grpc_error(code, message): code must be 0-16 or a status name, got " .. tostring(code), 2) end
  local h = { ["content-type"] = "application/grpc", ["grpc-status"] = tostring(c) }
  if message ~= nil and message ~= "" then h["grpc-message"] = grpc.encode_message(message) end
  return self:respond(200, "", h)
end

-- ------------------------------------------------------------------ response

local Response = {}
Response.__index = Response
for k, f in pairs(Headers) do Response[k] = f end

-- res:body / res:rewrite in on_body, as the server has them (lua.max_body: 1 MiB by default).
function Response:body(chunk, eof, max)
  if type(chunk) ~= "string" then error("res:body(chunk, eof, max): chunk must be the on_body chunk", 2) end
  local b = self._rbody
  if b == false then return false, "too large", chunk end
  if not b then b = { n = 0 }; self._rbody = b end
  max = max or 1024 * 1024
  b[#b + 1] = chunk
  b.n = b.n + #chunk
  if b.n > max then self._rbody = false; return false, "too large", concat(b) end
  if not eof then return nil end
  self._rbody = nil
  return concat(b)
end

function Response:rewrite(chunk, eof, fn, max)
  if type(fn) ~= "function" then error("res:rewrite(chunk, eof, fn, max): fn must be a function", 2) end
  local body, _, pass = self:body(chunk, eof, max)
  if body == nil then return nil end
  if body == false then return pass end
  return fn(body) or body
end

-- A mock upstream response. `opts`: status (200), headers, body (a string, or a list of
-- chunks fed to on_body one by one).
function testing.response(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("testing.response(opts): opts must be a table", 2) end
  local res = setmetatable({}, Response)
  local st = opts.status or 200
  if type(st) ~= "number" then error("testing.response: status must be a number", 2) end
  res.status = st
  init_headers(res, opts.headers, "testing.response")
  local body = opts.body or ""
  if type(body) == "string" then
    res._chunks = { body }
  elseif type(body) == "table" then
    res._chunks = {}
    for i, c in ipairs(body) do
      if type(c) ~= "string" then error("testing.response: body chunks must be strings", 2) end
      res._chunks[i] = c
    end
  else
    error("testing.response: body must be a string or a list of strings", 2)
  end
  return res
end

-- ------------------------------------------------------------------ loading and running

local PHASES = { on_request = true, on_response = true, on_body = true, on_log = true }

local function check_filter(f, label)
  if type(f) ~= "table" then error(format("filter %s is a %s, not a filter table", label, type(f)), 0) end
  for k, v in pairs(f) do
    if type(k) == "string" and sub(k, 1, 3) == "on_" then
      if not PHASES[k] then error(format("filter %s has unknown phase '%s'", label, k), 0) end
      if type(v) ~= "function" then error(format("filter %s: %s must be a function", label, k), 0) end
    end
  end
  return f
end

-- Resolves one `filters` entry the way the core does: a module name, { module, options },
-- an inline filter table, or (for tests) a factory function. Returns the filter table;
-- factory errors (bad options) propagate unchanged.
function testing.load(entry)
  local t = type(entry)
  if t == "string" then
    local m = require(entry)
    if type(m) == "function" then m = m(nil) end
    return check_filter(m, entry)
  elseif t == "function" then
    return check_filter(entry(nil), "(factory)")
  elseif t == "table" and (type(entry[1]) == "string" or type(entry[1]) == "function") then
    local m, label = entry[1], tostring(entry[1])
    if type(m) == "string" then m = require(m) end
    if type(m) == "function" then
      m = m(entry[2])
    elseif entry[2] ~= nil then
      error(format("filter %s takes no options (its module returns a table, not a factory)", label), 0)
    end
    return check_filter(m, label)
  elseif t == "table" then
    return check_filter(entry, "(inline)")
  end
  error("testing.load: a filter is a module name, { module, options } or a table, got " .. t, 2)
end

-- Runs one phase in a coroutine, as the core does; yields are resumed at once.
local function call(f, phase, i, ...)
  local co = coroutine.create(f[phase])
  local ok, r = coroutine.resume(co, ...)
  local n = 0
  while ok and coroutine.status(co) ~= "dead" do
    n = n + 1
    if n > 100000 then error(format("%s of filter #%d keeps yielding", phase, i), 0) end
    ok, r = coroutine.resume(co)
  end
  if not ok then error(format("%s of filter #%d failed: %s", phase, i, debug.traceback(co, tostring(r))), 0) end
  return r
end

local function split(s, size)
  if not size or #s <= size then return { s } end
  local out = {}
  for i = 1, #s, size do out[#out + 1] = sub(s, i, i + size - 1) end
  return out
end

-- Runs a chain (a `filters` list, in config syntax) like the core: on_request in order until
-- one responds; then, if a filter responded or `res` is given, on_response in reverse order,
-- on_body over the body chunks in order, and on_log in order, for every filter of the chain.
-- `opts`: ctx (table), chunk_size (split a string body into chunks of this size).
-- Returns { responded, status, body, headers, upstream, ctx, res, req }.
function testing.run_chain(entries, req, res, opts)
  if type(entries) ~= "table" then error("testing.run_chain(entries, req, res): entries must be a list", 2) end
  if getmetatable(req) ~= Request then error("testing.run: req must come from testing.request{}", 2) end
  if res ~= nil and getmetatable(res) ~= Response then error("testing.run: res must come from testing.response{}", 2) end
  opts = opts or {}
  local filters = {}
  for i, e in ipairs(entries) do filters[i] = testing.load(e) end
  local n = #filters
  local ctx = opts.ctx or {}
  local result = { ctx = ctx, req = req, responded = false }

  for i = 1, n do
    if filters[i].on_request then call(filters[i], "on_request", i, req, ctx) end
    if req.responded then result.responded = true; break end
  end
  result.upstream = req.upstream

  if result.responded then
    local r = req.response
    res = testing.response{ status = r.status, headers = r.headers, body = r.body }
  end
  if res == nil then return result end
  result.res = res

  for i = n, 1, -1 do
    if filters[i].on_response then call(filters[i], "on_response", i, res, ctx) end
  end

  local chunks = res._chunks
  if opts.chunk_size and #chunks == 1 then chunks = split(chunks[1], opts.chunk_size) end
  local out = {}
  for c = 1, #chunks do
    local chunk, eof = chunks[c], c == #chunks
    for i = 1, n do
      if filters[i].on_body and (chunk ~= nil or eof) then
        chunk = call(filters[i], "on_body", i, res, chunk or "", eof, ctx)
        if chunk ~= nil and type(chunk) ~= "string" then
          error(format("on_body of filter #%d returned a %s (want a string or nil)", i, type(chunk)), 0)
        end
      end
    end
    if chunk then out[#out + 1] = chunk end
  end
  result.body = concat(out)

  for i = 1, n do
    if filters[i].on_log then call(filters[i], "on_log", i, req, res, ctx) end
  end
  result.status = res.status
  result.headers = res:headers()
  return result
end

-- Runs a single filter: a module name, { module, options }, a filter table or a factory.
function testing.run(filter, req, res, opts)
  return testing.run_chain({ filter }, req, res, opts)
end

-- ------------------------------------------------------------------ mocks of the yielding APIs

-- Replaces m[key] (a module field of moonring, loaded lazily in the server) until :restore().
local function swap(key, value)
  local m = moonring()
  local old = rawget(m, key)
  rawset(m, key, value)
  return function() rawset(m, key, old) end
end

-- testing.mock_http(responder): moonring.http.request answers from `responder`, a function(opts)
-- returning a response table ({ status, headers, body }), or nil and an error; or a table from
-- "METHOD url" (or just the url) to such a response. Unknown requests get nil, "connection
-- refused". Returns a mock with .calls (every opts table, in order) and :restore().
function testing.mock_http(responder)
  local t = type(responder)
  if t ~= "function" and t ~= "table" then error("testing.mock_http(responder): a function or a table", 2) end
  local mock = { calls = {} }
  local function request(opts)
    if type(opts) ~= "table" or type(opts.url) ~= "string" then error("moonring.http.request: opts.url is required", 2) end
    mock.calls[#mock.calls + 1] = opts
    local method = (opts.method or "GET"):upper()
    local res, err
    if t == "function" then
      res, err = responder(opts)
    else
      res = responder[method .. " " .. opts.url] or responder[opts.url]
      if not res then err = "connection refused" end
    end
    if not res then return nil, err end
    local headers = {}
    for k, v in pairs(res.headers or {}) do headers[lower(k)] = v end
    return { status = res.status or 200, reason = res.reason or "", headers = headers, body = res.body or "" }
  end
  mock.restore = swap("http", { request = request })
  return mock
end

-- testing.mock_tcp(servers): moonring.tcp() sockets talk to fakes. `servers` maps "host:port" to
-- a function(data, conn) called with every send; what it returns is what the socket receives
-- next (conn.closed = true makes the peer close once that is read). An unknown address refuses
-- the connection. Returns a mock with .sent (every { addr, data }), .connects and :restore().
function testing.mock_tcp(servers)
  if type(servers) ~= "table" then error("testing.mock_tcp(servers): a table from \"host:port\" to a function", 2) end
  local mock = { sent = {}, connects = {}, pool = {} }
  local S = {}
  S.__index = S
  function S:settimeout(ms) self.timeout = ms end
  function S:settimeouts() end
  function S:connect(host, port)
    local addr = host .. ":" .. tostring(port)
    local fn = servers[addr]
    mock.connects[#mock.connects + 1] = addr
    if not fn then return nil, "connection refused" end
    local pooled = mock.pool[addr]
    if pooled and #pooled > 0 then
      local c = table.remove(pooled)
      self.conn, self.addr = c, addr
      c.reused = c.reused + 1
      return 1
    end
    self.conn, self.addr = { fn = fn, buf = "", reused = 0 }, addr
    return 1
  end
  function S:send(data)
    local c = self.conn
    if not c then return nil, "closed" end
    if type(data) == "table" then data = concat(data) end
    data = tostring(data)
    mock.sent[#mock.sent + 1] = { addr = self.addr, data = data }
    local reply = c.fn(data, c)
    if reply then c.buf = c.buf .. reply end
    return #data
  end
  local function take(self, n)
    local c = self.conn
    local out = sub(c.buf, 1, n)
    c.buf = sub(c.buf, n + 1)
    return out
  end
  function S:receive(pat)
    local c = self.conn
    if not c then return nil, "closed" end
    pat = pat or "*l"
    if pat == "*l" or pat == "l" then
      local i = find(c.buf, "\n", 1, true)
      if not i then
        local partial = take(self, #c.buf)
        return nil, c.closed and "closed" or "timeout", partial
      end
      local line = take(self, i)
      return (gsub(line, "\r?\n$", ""))
    elseif pat == "*a" or pat == "a" then
      return take(self, #c.buf)
    end
    local n = tonumber(pat)
    if #c.buf < n then return nil, c.closed and "closed" or "timeout", take(self, #c.buf) end
    return take(self, n)
  end
  function S:receiveuntil(delim)
    return function()
      local c = self.conn
      if not c then return nil, "closed" end
      local i = find(c.buf, delim, 1, true)
      if not i then return nil, c.closed and "closed" or "timeout", take(self, #c.buf) end
      local out = take(self, i - 1)
      take(self, #delim)
      return out
    end
  end
  function S:setkeepalive()
    local c = self.conn
    if not c then return nil, "closed" end
    self.conn = nil
    local p = mock.pool[self.addr] or {}
    mock.pool[self.addr] = p
    p[#p + 1] = c
    return 1
  end
  function S:getreusedtimes() return self.conn and self.conn.reused or nil, not self.conn and "closed" or nil end
  function S:close() if not self.conn then return nil, "closed" end self.conn = nil; return 1 end
  function S:sslhandshake() return true end
  mock.restore = swap("tcp", function() return setmetatable({}, S) end)
  return mock
end

-- testing.timers(): moonring.timer.at/every queue their callbacks on a fake schedule instead of
-- the worker's loop. timers:run(dt) advances time by dt seconds (default: to the next due
-- timer) and runs what is due, each callback in a coroutine (yields resumed at once);
-- timers:pending() counts them; :restore() puts the real module back.
function testing.timers()
  local q, now = {}, 0
  local T = { }
  local function add(delay, interval, fn, ...)
    if type(delay) ~= "number" or delay < 0 then error("moonring.timer: the delay must be a non-negative number", 3) end
    if type(fn) ~= "function" then error("moonring.timer: fn must be a function", 3) end
    local t = { at = now + delay, interval = interval, fn = fn, args = { n = select("#", ...), ... } }
    q[#q + 1] = t
    return { cancel = function() if t.cancelled then return nil, "the timer is not pending" end t.cancelled = true; return true end }
  end
  local fake = {
    at = function(delay, fn, ...) return add(delay, nil, fn, ...) end,
    every = function(iv, fn, ...) return add(iv, iv, fn, ...) end,
    pending = function() local n = 0 for _, t in ipairs(q) do if not t.cancelled then n = n + 1 end end return n end,
  }
  function T:pending() return fake.pending() end
  function T:now() return now end
  -- Runs every timer due within dt seconds (each `every` as often as it falls due), in time order.
  function T:run(dt, premature)
    local limit
    if dt then limit = now + dt else
      for _, t in ipairs(q) do if not t.cancelled and (not limit or t.at < limit) then limit = t.at end end
      limit = limit or now
    end
    while true do
      table.sort(q, function(a, b) return a.at < b.at end)
      local t = q[1]
      if not t or t.at > limit then break end
      table.remove(q, 1)
      if not t.cancelled then
        now = t.at
        local co = coroutine.create(t.fn)
        local ok, err = coroutine.resume(co, premature or false, unpack(t.args, 1, t.args.n))
        while ok and coroutine.status(co) ~= "dead" do ok, err = coroutine.resume(co) end
        if not ok then error("timer callback failed: " .. debug.traceback(co, tostring(err)), 0) end
        if t.interval and not t.cancelled then t.at = t.at + t.interval; q[#q + 1] = t end
      end
    end
    now = limit
  end
  T.restore = swap("timer", fake)
  return setmetatable(T, { __index = fake })
end

-- moonring.thread outside the server: spawn runs the function to its end at once (yields are
-- resumed at once, as in testing.run), wait returns its results, kill refuses (it has ended).
do
  local Thread = {}
  local fake = {
    spawn = function(fn, ...)
      if type(fn) ~= "function" then error("moonring.thread.spawn(fn, ...): fn must be a function", 2) end
      local co = coroutine.create(fn)
      local res = { coroutine.resume(co, ...) }
      while res[1] and coroutine.status(co) ~= "dead" do res = { coroutine.resume(co) } end
      return setmetatable({ res = res, n = #res }, Thread)
    end,
    wait = function(...)
      local th = ...
      if getmetatable(th) ~= Thread then error("moonring.thread.wait: expected a thread", 2) end
      if th.waited then return nil, "already waited or killed" end
      th.waited = true
      return unpack(th.res, 1, th.n)
    end,
    kill = function(th)
      if th.waited then return nil, "already waited or killed" end
      return nil, "already terminated"
    end,
  }
  testing.thread = fake
  rawset(moonring(), "thread", fake)
end

-- ------------------------------------------------------------------ routes and handlers

-- testing.config(source): a config (a file path, Lua source, or a table) loaded and checked as
-- the server does (filters resolved, options checked); nil, err when invalid.
function testing.config(src)
  local config = require "moonring.config"
  if type(src) == "table" then return config.normalise(src, "config") end
  if type(src) ~= "string" then error("testing.config(src): a path, Lua source or a table", 2) end
  if not find(src, "\n", 1, true) and io.open(src, "rb") then return config.load(src) end
  local chunk, err = loadstring(src, "=config")
  if not chunk then return nil, err end
  local ok, tbl = pcall(chunk)
  if not ok then return nil, tbl end
  return config.normalise(tbl, "config")
end

-- testing.route(cfg, req): the route (a table of cfg.routes, with .name) that req matches, as
-- the server would choose it (routing keys, `match` functions, `router`), or nil for a 404.
function testing.route(cfg, req)
  if type(cfg) ~= "table" or type(cfg.routes) ~= "table" then error("testing.route(cfg, req): cfg from testing.config", 2) end
  if getmetatable(req) ~= Request then error("testing.route: req must come from testing.request{}", 2) end
  if cfg.router then
    local v = cfg.router(req)
    if v == nil or v == false then return nil end
    if type(v) == "number" then return cfg.routes[v] end
    for _, r in ipairs(cfg.routes) do if r.name == v then return r end end
    error("router returned " .. tostring(v) .. ", which names no route", 0)
  end
  cfg._match = cfg._match or require("moonring.router").compile(cfg.routes)
  local i = cfg._match(req)
  return i and i > 0 and cfg.routes[i] or nil
end

-- testing.handle(cfg, req, res?): routes req and runs what the server would: the route's chain
-- and its handler (a handler's return value becomes the response), or, on a proxied route, the
-- chain against `res` (the upstream's mock response). Returns run_chain's result plus .route
-- (nil and .status 404 when nothing matches).
function testing.handle(cfg, req, res, opts)
  local route = testing.route(cfg, req)
  if not route then return { status = 404, responded = true, body = "404 Not Found\n" } end
  local entries = {}
  for i, e in ipairs(route.chain or {}) do entries[i] = e.filter end
  if route.handler then
    local h = route.handler
    entries[#entries + 1] = { on_request = function(r, ctx)
      local status, body, headers = h(r, ctx)
      if r.responded then return end
      if type(status) == "number" then r:respond(status, body, headers)
      elseif type(status) == "string" then r:respond(200, status, body)
      else error("the handler of " .. tostring(route.name) .. " returned without a response", 0) end
    end }
  end
  local result = testing.run_chain(entries, req, res, opts)
  result.route = route
  return result
end

return testing
