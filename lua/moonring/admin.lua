-- What the admin endpoint shows of a configuration (GET /-/config): the validated, normalised
-- table as JSON, with secrets masked. Runs in the validation VM on the main thread, once per load.
local M = {}

-- Keys whose values are secrets wherever they appear (filter options included): their values
-- become "***". basic_auth's `users` maps names to passwords, so its values are masked too.
local SECRET = { password = true, passwd = true, secret = true, token = true, users = true, credentials = true,
                 api_key = true, apikey = true, private_key = true, key_password = true, authorization = true }

local function secret_key(k)
  if type(k) ~= "string" then return false end
  local l = k:lower()
  return SECRET[l] or l:find("password", 1, true) or l:find("secret", 1, true) or l:find("token", 1, true)
end

local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  local n = #t
  if n == 0 then return next(t) == nil and false end
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

local function encode(v, out, seen, depth)
  local t = type(v)
  if t == "string" then out[#out + 1] = esc(v)
  elseif t == "number" then
    out[#out + 1] = (v ~= v or v == math.huge or v == -math.huge) and "null" or
      (v % 1 == 0 and string.format("%d", v) or string.format("%.17g", v))
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "table" then
    if seen[v] or depth > 32 then out[#out + 1] = '"(cycle)"'; return end
    seen[v] = true
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out, seen, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) == "string" or type(k) == "number" then keys[#keys + 1] = k end
      end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = esc(tostring(k)) .. ":"
        if secret_key(k) and v[k] ~= false and v[k] ~= nil then out[#out + 1] = '"***"'
        else encode(v[k], out, seen, depth + 1) end
      end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  elseif t == "nil" then out[#out + 1] = "null"
  else out[#out + 1] = esc("<" .. t .. ">") end
end

function M.config_json(cfg)
  local out = {}
  encode(cfg, out, {}, 0)
  out[#out + 1] = "\n"
  return table.concat(out)
end

M.encode = function(v) local out = {}; encode(v, out, {}, 0); return table.concat(out) end

return M
