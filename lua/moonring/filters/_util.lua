-- Helpers shared by the stock filters and moonring.testing. Not a filter itself.
--
-- Everything that touches the outside world goes through here so that tests can swap it:
-- time is read from `moonring.now()` at call time (moonring.testing.clock replaces it), shared
-- dicts are looked up through `moonring.shared`, and libcrypto is reached through the FFI
-- (the moonring binary links it; outside it ffi.load("crypto") is tried).
local ffi = require "ffi"
local bit = require "bit"

local band, bor, bxor, lshift, rshift = bit.band, bit.bor, bit.bxor, bit.lshift, bit.rshift
local byte, char, find, format, gsub, sub = string.byte, string.char, string.find, string.format,
  string.gsub, string.sub
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local loaded = package.loaded

local M = {}

-- ------------------------------------------------------------------ option checking

-- `v` for an error message: its type, and its value when that is short.
function M.describe(v)
  local t = type(v)
  if t == "string" then return #v <= 40 and format("%q", v) or "a string" end
  if t == "number" or t == "boolean" then return format("%s %s", t, tostring(v)) end
  return t
end

local function fail(fname, opt, msg)
  error(format("%s: option '%s' %s", fname, opt, msg), 0)
end
M.fail = fail

local distance = require("moonring.config").levenshtein -- for "did you mean"

-- Checks that `opts` is nil or a table whose keys are all in `known` (a list); returns a table.
function M.options(fname, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(format("%s: options must be a table, got %s", fname, M.describe(opts)), 0)
  end
  local set = {}
  for _, k in ipairs(known) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then
      local hint, best = "", 3
      if type(k) == "string" then
        for _, c in ipairs(known) do
          local d = distance(k, c)
          if d < best then best, hint = d, format(" (did you mean '%s'?)", c) end
        end
      end
      error(format("%s: unknown option '%s'%s", fname, tostring(k), hint), 0)
    end
  end
  return opts
end

function M.check_type(fname, opt, v, want, optional)
  if v == nil and optional then return v end
  if type(v) ~= want then fail(fname, opt, format("must be a %s, got %s", want, M.describe(v))) end
  return v
end

function M.check_status(fname, opt, v, default, allowed)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= floor(v) or v < 100 or v > 599 then
    fail(fname, opt, "must be an HTTP status code (100-599), got " .. M.describe(v))
  end
  if allowed and not allowed[v] then
    local l = {}
    for s in pairs(allowed) do l[#l + 1] = s end
    sort(l)
    fail(fname, opt, format("must be one of %s, got %d", concat(l, ", "), v))
  end
  return v
end

-- A string or a list of strings, returned as a list (nil → `default`).
function M.check_list(fname, opt, v, default)
  if v == nil then return default end
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" then fail(fname, opt, "must be a string or a list of strings, got " .. M.describe(v)) end
  local out = {}
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > #v or k ~= floor(k) then
      fail(fname, opt, "must be a list of strings (found key " .. M.describe(k) .. ")")
    end
  end
  for i = 1, #v do
    if type(v[i]) ~= "string" then fail(fname, opt .. "[" .. i .. "]", "must be a string, got " .. M.describe(v[i])) end
    out[i] = v[i]
  end
  return out
end

local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

function M.valid_header_name(name)
  return type(name) == "string" and find(name, TOKEN) ~= nil
end

function M.valid_header_value(v)
  return type(v) == "string" and not find(v, "[%z\r\n]")
end

function M.check_header_name(fname, opt, name)
  if not M.valid_header_name(name) then fail(fname, opt, "must be a valid header name, got " .. M.describe(name)) end
  return name
end

function M.check_header_value(fname, opt, v)
  if type(v) == "number" then v = tostring(v) end
  if not M.valid_header_value(v) then
    fail(fname, opt, "must be a header value (string without CR, LF or NUL), got " .. M.describe(v))
  end
  return v
end

-- ------------------------------------------------------------------ time and moonring

local fallback_now
do
  local ok = pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } mr_filters_timespec;
    int clock_gettime(int clk_id, mr_filters_timespec *tp);
  ]])
  local ts = ok and ffi.new("mr_filters_timespec")
  if ok and pcall(function() return ffi.C.clock_gettime(0, ts) end) then
    fallback_now = function()
      ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME
      return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
  else
    fallback_now = os.time
  end
end
M.realtime = fallback_now

pcall(require, "moonring") -- the real module when it is there; filters never need more than now()

-- Seconds (float), from moonring.now(), read at call time so that tests can replace it.
function M.now()
  local m = loaded.moonring
  local f = type(m) == "table" and m.now
  if f then return f() end
  return fallback_now()
end

-- `moonring.shared[name]`, or nil, err, why ("unavailable": no moonring.shared here at all;
-- "missing": no dict of that name).
function M.shared_dict(name)
  local m = loaded.moonring
  local ok, shared = pcall(function() return type(m) == "table" and m.shared or require("moonring.shared") end)
  if not ok or (type(shared) ~= "table" and type(shared) ~= "userdata") then
    return nil, "shared dicts are unavailable: " .. tostring(shared), "unavailable"
  end
  local ok2, dict = pcall(function() return shared[name] end)
  if not ok2 or dict == nil then
    return nil, "no shared dict named '" .. name .. "' (declare it in the config's `shared`)", "missing"
  end
  return dict
end

function M.log(level, msg)
  local m = loaded.moonring
  local f = type(m) == "table" and m.log
  if f then return f(level, msg) end
  io.stderr:write(msg, "\n")
end

-- ------------------------------------------------------------------ libcrypto

local crypto -- the clib with SHA256 and RAND_bytes, or false

local function has_symbols(lib)
  return lib.SHA256 ~= nil and lib.RAND_bytes ~= nil
end

local function load_crypto()
  pcall(ffi.cdef, [[
    unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
    int RAND_bytes(unsigned char *buf, int num);
  ]])
  -- The moonring binary links libcrypto, so its symbols are global there; else load it.
  for _, name in ipairs({ false, "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
    local ok, lib = true, ffi.C
    if name then ok, lib = pcall(ffi.load, name) end
    if ok and pcall(has_symbols, lib) then return lib end
  end
  return false
end

local function libcrypto()
  if crypto == nil then crypto = load_crypto() end
  return crypto or nil
end
M.libcrypto = libcrypto

local md = ffi.new("unsigned char[32]")
-- The raw 32-byte SHA-256 digest of `s`, or nil, err without libcrypto.
function M.sha256(s)
  local lib = libcrypto()
  if not lib then return nil, "libcrypto is not available" end
  lib.SHA256(s, #s, md)
  return ffi.string(md, 32)
end

local HEX = ffi.new("const char[17]", "0123456789abcdef")
local rnd = ffi.new("unsigned char[16]")
local hexbuf = ffi.new("char[32]")
local seeded = false

local function seed()
  seeded = true
  local f = io.open("/dev/urandom", "rb")
  local s = f and f:read(8)
  if f then f:close() end
  local n = 0
  if s and #s == 8 then
    for i = 1, 6 do n = n * 256 + byte(s, i) end -- 48 bits: exact in a double
  else
    n = fallback_now() * 1e6 + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0)
  end
  math.randomseed(n)
end

-- 128 random bits as 32 lowercase hex digits: RAND_bytes from libcrypto, else math.random
-- seeded from /dev/urandom once per VM (so per worker).
function M.random_hex128()
  local lib = libcrypto()
  if not (lib and lib.RAND_bytes(rnd, 16) == 1) then
    if not seeded then seed() end
    for i = 0, 15 do rnd[i] = math.random(0, 255) end
  end
  for i = 0, 15 do
    local b = rnd[i]
    hexbuf[2 * i] = HEX[rshift(b, 4)]
    hexbuf[2 * i + 1] = HEX[band(b, 15)]
  end
  return ffi.string(hexbuf, 32)
end

-- ------------------------------------------------------------------ bytes

-- Compares two strings in time that depends only on #a (pass the attacker's string as `a`).
function M.secure_eq(a, b)
  local r = bxor(#a, #b)
  for i = 1, #a do
    r = bor(r, bxor(byte(a, i), byte(b, i) or 0))
  end
  return r == 0
end

local B64 = ffi.new("int8_t[256]", -1)
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 0, 255 do B64[i] = -1 end
  for i = 1, 64 do B64[byte(alphabet, i)] = i - 1 end
end
local B64_MAX = 4096
local b64out = ffi.new("uint8_t[?]", B64_MAX)

-- Standard base64 (RFC 4648 §4), padding optional; nil, err on any invalid input.
function M.b64decode(s)
  local n = #s
  if n > B64_MAX then return nil, "too long" end
  local pad = 0
  if n > 0 and byte(s, n) == 61 then
    pad = byte(s, n - 1) == 61 and 2 or 1
    if n % 4 ~= 0 then return nil, "bad padding" end
  end
  local m = n - pad
  if m % 4 == 1 then return nil, "bad length" end
  local acc, bits, out = 0, 0, 0
  for i = 1, m do
    local v = B64[byte(s, i)]
    if v < 0 then return nil, "invalid character" end
    acc = bor(lshift(acc, 6), v)
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      b64out[out] = band(rshift(acc, bits), 255)
      out = out + 1
    end
  end
  return ffi.string(b64out, out)
end

function M.tohex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

function M.fromhex(h)
  if type(h) ~= "string" or #h % 2 ~= 0 or find(h, "[^%x]") then return nil end
  return (gsub(h, "%x%x", function(x) return char(tonumber(x, 16)) end))
end

-- ------------------------------------------------------------------ JSON

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\127"] = "\\u007f" }
for i = 0, 31 do
  local c = char(i)
  if not escapes[c] then escapes[c] = format("\\u%04x", i) end
end

-- Replaces every byte that is not part of a well-formed UTF-8 sequence (overlongs,
-- surrogates and code points above U+10FFFF included) with the escape for U+FFFD.
local function fix_utf8(s)
  local out, n, i, len = {}, 0, 1, #s
  local start = 1
  while i <= len do
    local c = byte(s, i)
    local size, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then size = 1
    elseif c >= 0xC2 and c <= 0xDF then size = 2
    elseif c >= 0xE0 and c <= 0xEF then
      size = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      size = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    end
    local ok = size > 0 and i + size - 1 <= len
    if ok and size > 1 then
      local c2 = byte(s, i + 1)
      ok = c2 >= lo and c2 <= hi
      for j = i + 2, i + size - 1 do
        if not ok then break end
        local cj = byte(s, j)
        ok = cj >= 0x80 and cj <= 0xBF
      end
    end
    if ok then
      i = i + size
    else
      n = n + 1; out[n] = sub(s, start, i - 1)
      n = n + 1; out[n] = "\\ufffd"
      i = i + 1
      start = i
    end
  end
  if start == 1 then return s end
  n = n + 1; out[n] = sub(s, start)
  return concat(out, "", 1, n)
end

-- A JSON string literal for `s`: escapes quotes, backslashes and control characters, and
-- keeps the output valid UTF-8.
function M.json_string(s)
  if not find(s, '[%z\1-\31"\\\127-\255]') then return '"' .. s .. '"' end
  s = gsub(s, '[%z\1-\31"\\\127]', escapes)
  if find(s, "[\128-\255]") then s = fix_utf8(s) end
  return '"' .. s .. '"'
end

local json_string = M.json_string

local function json_number(x)
  if x ~= x or x == huge or x == -huge then return "null" end
  if x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then return format("%d", x) end
  return format("%.14g", x)
end
M.json_number = json_number

local function encode(v, depth)
  local t = type(v)
  if t == "string" then return json_string(v)
  elseif t == "number" then return json_number(v)
  elseif t == "boolean" then return v and "true" or "false"
  elseif v == nil then return "null"
  elseif t ~= "table" then error("json: cannot encode a " .. t, 0)
  end
  if depth > 64 then error("json: nesting too deep (a cycle?)", 0) end
  local n, count = #v, 0
  for _ in pairs(v) do count = count + 1 end
  local parts = {}
  if n > 0 and count == n then
    for i = 1, n do parts[i] = encode(v[i], depth + 1) end
    return "[" .. concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" and type(k) ~= "number" then error("json: object keys must be strings", 0) end
    keys[#keys + 1] = tostring(k)
  end
  sort(keys)
  for i, k in ipairs(keys) do
    local val = v[k]
    if val == nil then val = v[tonumber(k)] end
    parts[i] = json_string(k) .. ":" .. encode(val, depth + 1)
  end
  return "{" .. concat(parts, ",") .. "}"
end

-- Minimal JSON encoder: nil → null, tables with keys 1..n → arrays, other tables → objects
-- with sorted keys (an empty table is `{}`), NaN/inf → null.
function M.json_encode(v)
  return encode(v, 0)
end

return M
