-- The per-worker Lua runtime: evaluates the config in this VM (so route handlers are live
-- functions here) and runs handlers with a request object backed by LuaJIT FFI calls into the
-- core (src/lua/api.c). Nothing here touches the Lua C API, so the hot calls JIT-compile.
local ffi = require "ffi"
local config = require "moonring.config"

ffi.cdef [[
int mr_req_method(void *r, const char **p, size_t *n);
int mr_req_target(void *r, const char **p, size_t *n);
int mr_req_remote_addr(void *r, const char **p, size_t *n);
int mr_req_header(void *r, const char *name, size_t nlen, const char **p, size_t *n);
int mr_req_header_count(void *r);
int mr_req_header_at(void *r, int i, const char **name, size_t *nlen, const char **val, size_t *vlen);
int mr_req_respond(void *r, int status, const char *body, size_t blen, const char **hdrs, int nhdrs);
]]

local C = ffi.C
local ffi_string = ffi.string
local pp = ffi.new("const char *[1]")
local pn = ffi.new("size_t[1]")
local pp2 = ffi.new("const char *[1]")
local pn2 = ffi.new("size_t[1]")

local M = { routes = {} }

local req_methods = {}
local req_mt = {}

local function target(self)
  local t = rawget(self, "_target")
  if not t then
    C.mr_req_target(self._r, pp, pn)
    t = ffi_string(pp[0], pn[0])
    rawset(self, "_target", t)
  end
  return t
end

local getters = {
  method = function(self) C.mr_req_method(self._r, pp, pn); return ffi_string(pp[0], pn[0]) end,
  path = function(self) local t = target(self); local q = t:find("?", 1, true); return q and t:sub(1, q - 1) or t end,
  query = function(self) local t = target(self); local q = t:find("?", 1, true); return q and t:sub(q + 1) or "" end,
  host = function(self) local h = self:header("host"); return h and h:gsub(":%d+$", "") or "" end,
  scheme = function() return "http" end,
  remote_addr = function(self) C.mr_req_remote_addr(self._r, pp, pn); return ffi_string(pp[0], pn[0]) end,
  params = function() return {} end,
}

req_mt.__index = function(self, k)
  local m = req_methods[k]
  if m then return m end
  local g = getters[k]
  if g then
    local v = g(self)
    rawset(self, k, v)
    return v
  end
  return nil
end

function req_methods.header(self, name)
  if type(name) ~= "string" then error("req:header(name): name must be a string", 2) end
  if C.mr_req_header(self._r, name, #name, pp, pn) ~= 0 then return nil end
  return ffi_string(pp[0], pn[0])
end

function req_methods.headers(self)
  local t = {}
  local n = C.mr_req_header_count(self._r)
  for i = 0, n - 1 do
    if C.mr_req_header_at(self._r, i, pp, pn, pp2, pn2) == 0 then
      local k = ffi_string(pp[0], pn[0]):lower()
      local v = ffi_string(pp2[0], pn2[0])
      if t[k] then t[k] = t[k] .. ", " .. v else t[k] = v end
    end
  end
  return t
end

function req_methods.arg(self, name)
  local q = self.query
  for k, v in q:gmatch("([^&=]+)=?([^&]*)") do
    if k == name then return v end
  end
  return nil
end

local hdr_buf = ffi.new("const char *[128]")

function req_methods.respond(self, status, body, headers)
  if type(status) ~= "number" then error("req:respond(status, body, headers): status must be a number", 2) end
  body = body or ""
  if type(body) ~= "string" then body = tostring(body) end
  local n = 0
  local keep = {}
  if headers then
    for k, v in pairs(headers) do
      if n >= 64 then error("req:respond: too many headers", 2) end
      k, v = tostring(k), tostring(v)
      if k:find("[\r\n:]") or v:find("[\r\n]") then error("req:respond: invalid header " .. k, 2) end
      keep[#keep + 1] = k; keep[#keep + 1] = v
      hdr_buf[2 * n] = k
      hdr_buf[2 * n + 1] = v
      n = n + 1
    end
  end
  local rc = C.mr_req_respond(self._r, status, body, #body, hdr_buf, n)
  if rc == -3 then return nil, "response already sent" end
  if rc ~= 0 then error("req:respond failed (" .. rc .. ")", 2) end
  self._responded = true
  return true
end

function M.init(file)
  local cfg, err = config.load(file)
  if not cfg then error(err, 0) end
  M.config = cfg
  for i, r in ipairs(cfg.routes or {}) do
    M.routes[i] = r
  end
end

function M.handle(index, r)
  local route = M.routes[index]
  local req = setmetatable({ _r = r }, req_mt)
  local ctx = {}
  local status, body, headers = route.handler(req, ctx)
  if not req._responded then
    if type(status) == "number" then
      req:respond(status, body, headers)
    elseif type(status) == "string" then
      req:respond(200, status, body)
    else
      error("handler of " .. (route.name or ("routes[" .. index .. "]")) .. " returned without a response", 0)
    end
  end
end

return M
