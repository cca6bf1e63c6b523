-- moonring.shared: shared dictionaries (the C store is src/lua/shdict.c; user docs: docs/shared.md).
--
--   local shared = require "moonring.shared"
--   local limits = shared.limits            -- nil when no dict of that name is configured
--   local n, err = limits:incr(ip, 1, 0, 60)
--
-- Only LuaJIT FFI calls (no lua_CFunction), with preallocated out-parameters, so get/set/incr
-- JIT-compile. Dicts are found in the process-wide registry by name (mr_shdict_find) and the
-- handle is cached in this table.
--
-- Outside the server (unit specs, tools) the mr_shdict_* symbols are not in the process: load the
-- core shared library and hand it over before the first lookup:
--   shared.use_lib(ffi.load(os.getenv("MOONRING_FFI_LIB") or "build/libmoonring_ffi.so"))
-- The helper name use_lib is looked up before dict names: a dict named "use_lib" is shadowed.
local ffi = require "ffi"
local base = require "moonring.base"

ffi.cdef [[
void *mr_shdict_find(const char *name, size_t len);
int mr_shdict_get(void *d, const char *k, size_t kl, int stale_ok, int *type, double *num,
                  char *buf, size_t *len, uint32_t *flags, int *stale);
int mr_shdict_store(void *d, int op, const char *k, size_t kl, int type, const char *str,
                    size_t sl, double num, double exptime, uint32_t flags, int *forcible);
int mr_shdict_incr(void *d, const char *k, size_t kl, double by, int has_init, double init,
                   double init_ttl, double *out, int *forcible);
int mr_shdict_delete(void *d, const char *k, size_t kl);
int mr_shdict_ttl(void *d, const char *k, size_t kl, int64_t *ms);
int mr_shdict_expire(void *d, const char *k, size_t kl, double exptime);
int mr_shdict_get_keys(void *d, int max, char *buf, size_t *len, int *count);
int mr_shdict_flush_all(void *d);
int mr_shdict_flush_expired(void *d, int max);
size_t mr_shdict_capacity(void *d);
size_t mr_shdict_free_space(void *d);
int mr_shdict_push(void *d, const char *k, size_t kl, int left, int type, const char *str, size_t sl, double num,
                   int *len_out, int *forcible);
int mr_shdict_pop(void *d, const char *k, size_t kl, int left, int *type, double *num, char *buf, size_t *len);
int mr_shdict_llen(void *d, const char *k, size_t kl, int *n);
]]

local C = ffi.C
local ffi_new, ffi_string = ffi.new, ffi.string
local type, tostring, tonumber, error, setmetatable, rawset, pairs =
  type, tostring, tonumber, error, setmetatable, rawset, pairs

local OK, DECLINED, TOO_SMALL = base.OK, base.DECLINED, base.TOO_SMALL
-- ngx.shared's words for the codes src/lua/shdict.h returns
local ERRS = {
  [DECLINED] = base.ERR_NOT_FOUND, [base.BAD_ARG] = "bad key", [base.EXISTS] = base.ERR_EXISTS,
  [base.BAD_TYPE] = "not a number", [base.NOMEM] = base.ERR_NOMEM, [base.RETIRED] = "dict removed",
}
-- Value types and store operations of src/lua/shdict.h.
local T_NIL, T_BOOLEAN, T_NUMBER, T_STRING, T_LIST = 0, 1, 3, 4, 5
local OP_SET, OP_ADD, OP_REPLACE, OP_SAFE = 0, 1, 2, 8
local KEY_MAX = 65535

-- Out-parameters, allocated once per VM (a VM is single-threaded and calls do not yield).
local BUF_SIZE = 16384
local buf = ffi_new("char[?]", BUF_SIZE)
local o_type = ffi_new("int[1]")
local o_num = ffi_new("double[1]")
local o_len = ffi_new("size_t[1]")
local o_flags = ffi_new("uint32_t[1]")
local o_stale = ffi_new("int[1]")
local o_forcible = ffi_new("int[1]")
local o_ms = ffi_new("int64_t[1]")
local o_count = ffi_new("int[1]")

-- `lvl` is the error level of the user's call site, counted from the function raising it.
local function bad_self(name, lvl)
  error("moonring.shared: call dict:" .. name .. "(...) with a colon, on a dict", lvl + 1)
end

-- Returns key, #key or nil, err. Numbers are converted like ngx.shared does; other types raise.
local function check_key(key, lvl)
  if type(key) ~= "string" then
    if type(key) ~= "number" then
      error("moonring.shared: key must be a string, got " .. type(key), lvl + 1)
    end
    key = tostring(key)
  end
  local n = #key
  if n == 0 then return nil, "empty key" end
  if n > KEY_MAX then return nil, "key too long" end
  return key, n
end

local function check_ttl(v, what, lvl)
  if v == nil then return 0 end
  if type(v) ~= "number" or not (v >= 0) then
    error("moonring.shared: " .. what .. " must be a non-negative number (seconds), got " .. tostring(v), lvl + 1)
  end
  return v
end

-- Never `return f(...)` on the hot paths: LuaJIT counts tail calls (even to builtins like
-- ffi.string) towards the loop unroll limit, so a loop doing a few dict calls would abort traces.
local function decode(t, n)
  local v
  if t == T_STRING then
    v = ffi_string(buf, n)
  elseif t == T_NUMBER then
    v = o_num[0]
  else
    v = o_num[0] ~= 0
  end
  return v
end

-- Rare path: the string value is larger than `buf`. Retry with an exact-size buffer (the value
-- may change between the two calls, hence the loop).
local function get_big(d, key, n, stale_ok)
  while true do
    local cap = tonumber(o_len[0])
    local tmp = ffi_new("char[?]", cap)
    local rc = C.mr_shdict_get(d, key, n, stale_ok, o_type, o_num, tmp, o_len, o_flags, o_stale)
    if rc == OK then
      local t = o_type[0]
      local v
      if t == T_STRING then v = ffi_string(tmp, o_len[0]) else v = decode(t, 0) end
      return rc, v
    end
    if rc ~= TOO_SMALL then return rc end
  end
end

local methods = {}

local function get(self, key, stale_ok)
  local d = type(self) == "table" and self._d
  if not d then bad_self(stale_ok == 1 and "get_stale" or "get", 3) end
  local k, n = check_key(key, 3)
  if not k then return nil, n end
  o_len[0] = BUF_SIZE
  local rc = C.mr_shdict_get(d, k, n, stale_ok, o_type, o_num, buf, o_len, o_flags, o_stale)
  local v
  if rc == OK then
    v = decode(o_type[0], o_len[0])
  elseif rc == TOO_SMALL then
    rc, v = get_big(d, k, n, stale_ok)
  end
  if rc ~= OK then
    if rc == DECLINED then return nil end
    return nil, ERRS[rc]
  end
  if o_type[0] == T_LIST then return nil, "value is a list" end
  local flags = o_flags[0]
  if stale_ok == 0 then
    if flags == 0 then return v end
    return v, flags
  end
  if flags == 0 then flags = nil end
  return v, flags, o_stale[0] == 1
end

-- value, flags = dict:get(key)   (flags only when non-zero, like ngx.shared)
function methods.get(self, key)
  local v, flags = get(self, key, 0)
  return v, flags
end

-- value, flags, stale = dict:get_stale(key): also returns expired (not yet reclaimed) values.
function methods.get_stale(self, key)
  local v, flags, stale = get(self, key, 1)
  return v, flags, stale
end

local function store(self, op, name, key, value, exptime, flags)
  local d = type(self) == "table" and self._d
  if not d then bad_self(name, 3) end
  local k, n = check_key(key, 3)
  if not k then return false, n, false end
  exptime = check_ttl(exptime, "exptime", 3)
  if flags == nil then
    flags = 0
  elseif type(flags) ~= "number" or flags < 0 or flags > 4294967295 or flags % 1 ~= 0 then
    error("moonring.shared: flags must be an integer in [0, 2^32), got " .. tostring(flags), 3)
  end
  local rc
  local t = type(value)
  if t == "string" then
    rc = C.mr_shdict_store(d, op, k, n, T_STRING, value, #value, 0, exptime, flags, o_forcible)
  elseif t == "number" then
    rc = C.mr_shdict_store(d, op, k, n, T_NUMBER, nil, 0, value, exptime, flags, o_forcible)
  elseif t == "boolean" then
    rc = C.mr_shdict_store(d, op, k, n, T_BOOLEAN, nil, 0, value and 1 or 0, exptime, flags, o_forcible)
  elseif t == "nil" then
    rc = C.mr_shdict_store(d, op, k, n, T_NIL, nil, 0, 0, 0, 0, o_forcible)
  else
    error("moonring.shared: value must be a string, number, boolean or nil, got " .. t, 3)
  end
  if rc == OK then return true, nil, o_forcible[0] == 1 end
  return false, ERRS[rc], o_forcible[0] == 1
end

-- ok, err, forcible = dict:set(key, value, exptime?, flags?)   (value nil deletes)
function methods.set(self, key, value, exptime, flags)
  local ok, err, forcible = store(self, OP_SET, "set", key, value, exptime, flags)
  return ok, err, forcible
end
function methods.safe_set(self, key, value, exptime, flags)
  local ok, err, forcible = store(self, OP_SET + OP_SAFE, "safe_set", key, value, exptime, flags)
  return ok, err, forcible
end
function methods.add(self, key, value, exptime, flags)
  local ok, err, forcible = store(self, OP_ADD, "add", key, value, exptime, flags)
  return ok, err, forcible
end
function methods.safe_add(self, key, value, exptime, flags)
  local ok, err, forcible = store(self, OP_ADD + OP_SAFE, "safe_add", key, value, exptime, flags)
  return ok, err, forcible
end
function methods.replace(self, key, value, exptime, flags)
  local ok, err, forcible = store(self, OP_REPLACE, "replace", key, value, exptime, flags)
  return ok, err, forcible
end

-- ok = dict:delete(key)
function methods.delete(self, key)
  local d = type(self) == "table" and self._d
  if not d then bad_self("delete", 2) end
  local k, n = check_key(key, 2)
  if not k then return false, n end
  C.mr_shdict_delete(d, k, n)
  return true
end

-- new, err, forcible = dict:incr(key, value, init?, init_ttl?)
function methods.incr(self, key, value, init, init_ttl)
  local d = type(self) == "table" and self._d
  if not d then bad_self("incr", 2) end
  local k, n = check_key(key, 2)
  if not k then return nil, n end
  if type(value) ~= "number" then
    error("moonring.shared: incr value must be a number, got " .. type(value), 2)
  end
  local has_init = 0
  if init ~= nil then
    if type(init) ~= "number" then
      error("moonring.shared: incr init must be a number, got " .. type(init), 2)
    end
    has_init = 1
  else
    init = 0
    if init_ttl ~= nil then error("moonring.shared: incr init_ttl requires init", 2) end
  end
  init_ttl = check_ttl(init_ttl, "init_ttl", 2)
  local rc = C.mr_shdict_incr(d, k, n, value, has_init, init, init_ttl, o_num, o_forcible)
  if rc ~= OK then return nil, ERRS[rc] end
  if has_init == 1 then return o_num[0], nil, o_forcible[0] == 1 end
  return o_num[0]
end

-- seconds, err = dict:ttl(key): remaining lifetime, 0 when it never expires.
function methods.ttl(self, key)
  local d = type(self) == "table" and self._d
  if not d then bad_self("ttl", 2) end
  local k, n = check_key(key, 2)
  if not k then return nil, n end
  local rc = C.mr_shdict_ttl(d, k, n, o_ms)
  if rc ~= OK then return nil, ERRS[rc] end
  return tonumber(o_ms[0]) / 1000
end

-- ok, err = dict:expire(key, exptime): exptime 0 removes the expiry.
function methods.expire(self, key, exptime)
  local d = type(self) == "table" and self._d
  if not d then bad_self("expire", 2) end
  local k, n = check_key(key, 2)
  if not k then return nil, n end
  if exptime == nil then error("moonring.shared: expire(key, exptime): exptime missing", 2) end
  exptime = check_ttl(exptime, "exptime", 2)
  local rc = C.mr_shdict_expire(d, k, n, exptime)
  if rc ~= OK then return nil, ERRS[rc] end
  return true
end

local keybuf, keybuf_cap = nil, 0
local KEYBUF_KEEP = 65536

-- keys = dict:get_keys(max?): live keys, most recently used first; max defaults to 1024, 0 = all.
function methods.get_keys(self, max)
  local d = type(self) == "table" and self._d
  if not d then bad_self("get_keys", 2) end
  if max == nil then
    max = 1024
  elseif type(max) ~= "number" or max < 0 or max % 1 ~= 0 or max > 2147483647 then
    error("moonring.shared: get_keys max must be a non-negative integer, got " .. tostring(max), 2)
  end
  local b, cap = keybuf, keybuf_cap
  if not b then
    b, cap = ffi_new("char[?]", 4096), 4096
    keybuf, keybuf_cap = b, cap
  end
  while true do
    o_len[0] = cap
    local rc = C.mr_shdict_get_keys(d, max, b, o_len, o_count)
    if rc == OK then break end
    if rc ~= TOO_SMALL then return nil, ERRS[rc] end
    cap = tonumber(o_len[0]) + 4096
    b = ffi_new("char[?]", cap)
    if cap <= KEYBUF_KEEP then keybuf, keybuf_cap = b, cap end
  end
  local keys, pos = {}, 0
  local p = ffi.cast("const uint8_t *", b)
  for i = 1, o_count[0] do
    local kl = p[pos] + p[pos + 1] * 256
    keys[i] = ffi_string(p + pos + 2, kl)
    pos = pos + 2 + kl
  end
  return keys
end

-- Makes every entry invisible (O(1)); memory is reclaimed lazily or by flush_expired.
function methods.flush_all(self)
  local d = type(self) == "table" and self._d
  if not d then bad_self("flush_all", 2) end
  C.mr_shdict_flush_all(d)
  return true
end

-- n = dict:flush_expired(max?): frees up to max (default/0 = all) expired or flushed entries.
function methods.flush_expired(self, max)
  local d = type(self) == "table" and self._d
  if not d then bad_self("flush_expired", 2) end
  if max == nil then
    max = 0
  elseif type(max) ~= "number" or max < 0 or max % 1 ~= 0 or max > 2147483647 then
    error("moonring.shared: flush_expired max must be a non-negative integer, got " .. tostring(max), 2)
  end
  return C.mr_shdict_flush_expired(d, max)
end

-- Budget in bytes, and the part of it not charged to entries (expired/flushed ones count until
-- reclaimed).
function methods.capacity(self)
  local d = type(self) == "table" and self._d
  if not d then bad_self("capacity", 2) end
  return tonumber(C.mr_shdict_capacity(d))
end

function methods.free_space(self)
  local d = type(self) == "table" and self._d
  if not d then bad_self("free_space", 2) end
  return tonumber(C.mr_shdict_free_space(d))
end

local dict_mt = {
  __index = methods,
  __tostring = function(self) return "moonring.shared." .. self.name end,
}

-- Lists (ngx.shared.DICT's list operations), atomic across workers like everything else.
local function push(self, name, left, key, value)
  local d = type(self) == "table" and self._d
  if not d then bad_self(name, 3) end
  local k, n = check_key(key, 3)
  if not k then return nil, n end
  local rc
  local t = type(value)
  if t == "string" then
    rc = C.mr_shdict_push(d, k, n, left, T_STRING, value, #value, 0, o_count, o_forcible)
  elseif t == "number" then
    rc = C.mr_shdict_push(d, k, n, left, T_NUMBER, nil, 0, value, o_count, o_forcible)
  else
    return nil, "bad value type"
  end
  if rc == OK then return o_count[0] end
  if rc == base.BAD_TYPE then return nil, "value not a list" end
  return nil, ERRS[rc]
end

local function pop(self, name, left, key)
  local d = type(self) == "table" and self._d
  if not d then bad_self(name, 3) end
  local k, n = check_key(key, 3)
  if not k then return nil, n end
  o_len[0] = BUF_SIZE
  local rc = C.mr_shdict_pop(d, k, n, left, o_type, o_num, buf, o_len)
  if rc == TOO_SMALL then
    local tmp = ffi_new("char[?]", tonumber(o_len[0]))
    rc = C.mr_shdict_pop(d, k, n, left, o_type, o_num, tmp, o_len)
    if rc == OK then return o_type[0] == T_STRING and ffi_string(tmp, o_len[0]) or o_num[0] end
  end
  if rc == OK then return o_type[0] == T_STRING and ffi_string(buf, o_len[0]) or o_num[0] end
  if rc == DECLINED then return nil end
  if rc == base.BAD_TYPE then return nil, "value not a list" end
  return nil, ERRS[rc]
end

-- length, or nil, err ("value not a list", "no memory")
function methods.lpush(self, key, value) return push(self, "lpush", 1, key, value) end
function methods.rpush(self, key, value) return push(self, "rpush", 0, key, value) end
-- the item, nil for an empty or missing list, or nil, err
function methods.lpop(self, key) return pop(self, "lpop", 1, key) end
function methods.rpop(self, key) return pop(self, "rpop", 0, key) end
function methods.llen(self, key)
  local d = type(self) == "table" and self._d
  if not d then bad_self("llen", 2) end
  local k, n = check_key(key, 2)
  if not k then return nil, n end
  local rc = C.mr_shdict_llen(d, k, n, o_count)
  if rc == OK then return o_count[0] end
  if rc == base.BAD_TYPE then return nil, "value not a list" end
  return nil, ERRS[rc]
end

local helpers = {}
local shared = {}

function helpers.use_lib(lib)
  if lib == nil then lib = ffi.C end
  C = lib
  for k in pairs(shared) do shared[k] = nil end   -- handles came from the previous library
end

setmetatable(shared, {
  __index = function(self, name)
    local h = helpers[name]
    if h then return h end
    if type(name) == "string" and #name > 0 then
      local d = C.mr_shdict_find(name, #name)
      if d ~= nil then
        local dict = setmetatable({ _d = d, name = name }, dict_mt)
        rawset(self, name, dict)
        return dict
      end
    end
    return nil
  end,
  __newindex = function(_, name)
    error("moonring.shared is read-only (declare dicts in the config: shared = { "
      .. tostring(name) .. " = \"10m\" })", 2)
  end,
})

return shared
