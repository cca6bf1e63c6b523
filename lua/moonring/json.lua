-- moonring.json: JSON on Debian's lua-cjson (C, fast), with what OpenResty's fork of it adds
-- and Debian's 2.1.0 lacks: a way to write an empty array.
--
--   local json = require "moonring.json"
--   json.encode({ a = 1, list = json.empty_array })   --> '{"a":1,"list":[]}'
--   json.encode(setmetatable({}, json.array_mt))      --> '[]'
--   local v, err = json.decode(text)                  -- nil, err on bad input (never raises)
--   json.null                                         -- JSON null (== ngx.null == cjson.null)
--
-- cjson writes an empty Lua table as {}. A table whose metatable is json.array_mt, or the
-- json.empty_array value, is written as []. Finding them takes a walk over the value, which
-- encode does only once a script in this VM asked for either (reading json.array_mt or
-- json.empty_array, or calling json.array): code that never does pays nothing.
local cjson = require "cjson"

local type, pairs, next, getmetatable, tostring = type, pairs, next, getmetatable, tostring
local gsub, find = string.gsub, string.find

-- Our own instance: settings a script changes on the global cjson module do not reach it.
local enc = cjson.new()
local dec = cjson.new()
enc.encode_sparse_array(true) -- sparse arrays as objects rather than an error
enc.encode_invalid_numbers(false)

local M = { null = cjson.null, _VERSION = cjson._VERSION }

local array_mt = { __tostring = function() return "json array" end }
local EMPTY = setmetatable({}, { __tostring = function() return "json.empty_array" end })
local marking = false

-- What stands for [] until cjson has written the text: a string cjson copies as it is
-- (printable, nothing it escapes), random per VM so that data cannot clash with it.
local MARK
do
  local r = {}
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(12) or tostring(os.time()) .. tostring({})
  if f then f:close() end
  for i = 1, #bytes do r[i] = ("%02x"):format(bytes:byte(i)) end
  MARK = "@moonring.json.empty_array." .. table.concat(r) .. "@"
end
local QMARK = '"' .. MARK .. '"'

-- A copy of v in which every empty array is MARK (only the tables on the way are copied).
local function mark(v, depth)
  if v == EMPTY then return MARK, true end
  if type(v) ~= "table" then return v, false end
  if depth > 1000 then return v, false end -- cjson refuses it with its own error
  if next(v) == nil then
    if getmetatable(v) == array_mt then return MARK, true end
    return v, false
  end
  local out, changed = nil, false
  for k, x in pairs(v) do
    local y, c = mark(x, depth + 1)
    if c then
      if not out then
        out = {}
        for k2, x2 in pairs(v) do out[k2] = x2 end
      end
      out[k] = y
      changed = true
    end
  end
  if changed then return out, true end
  return v, false
end

-- The JSON text for v, or nil and an error (a function, a cycle, too deep, NaN...).
function M.encode(v)
  local changed = false
  if marking then v, changed = mark(v, 0) end
  local ok, s = pcall(enc.encode, v)
  if not ok then return nil, tostring(s) end
  if changed and find(s, MARK, 1, true) then s = gsub(s, QMARK, "[]") end
  return s
end

-- The value of a JSON text, or nil and an error. JSON null decodes to json.null.
function M.decode(s)
  if type(s) ~= "string" then return nil, "json.decode: expected a string, got " .. type(s) end
  local ok, v = pcall(dec.decode, s)
  if not ok then return nil, tostring(v) end
  return v
end

-- Marks t (default a new table) to be written as a JSON array even when it is empty.
function M.array(t)
  marking = true
  return setmetatable(t or {}, array_mt)
end

return setmetatable(M, { __index = function(_, k)
  if k == "array_mt" then marking = true; return array_mt end
  if k == "empty_array" then marking = true; return EMPTY end
end })
