-- basic_auth: HTTP Basic authentication (RFC 7617) against a static user list.
--
--   { "moonring.filters.basic_auth", {
--       users = { alice = "secret", bob = "{SHA256}2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" },
--       realm = "staff", keep = false, user_header = "X-Remote-User",
--   } }
--
-- A password is plain text or "{SHA256}" followed by the hex SHA-256 of the password
-- (printf %s 'pw' | sha256sum), which needs libcrypto (linked into moonring). Passwords are
-- compared in constant time. Missing or bad credentials get 401 with WWW-Authenticate. On
-- success ctx.user is the user name, Authorization is removed before proxying unless
-- `keep = true`, and `user_header`, if set, carries the user name upstream.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.basic_auth"
local find, match, sub = string.find, string.match, string.sub
local secure_eq, b64decode, sha256 = util.secure_eq, util.b64decode, util.sha256


local function compile_users(users)
  if type(users) ~= "table" then util.fail(NAME, "users", "is required: a map of user name to password") end
  local out, n, hashed = {}, 0, false
  for name, pw in pairs(users) do
    local opt = "users." .. tostring(name)
    if type(name) ~= "string" or name == "" or find(name, "[:%c]") then
      util.fail(NAME, opt, "is not a valid user name (non-empty string without ':' or control characters)")
    end
    if type(pw) ~= "string" then util.fail(NAME, opt, "must be a password string, got " .. util.describe(pw)) end
    if sub(pw, 1, 8) == "{SHA256}" then
      local digest = util.fromhex(sub(pw, 9))
      if not digest or #digest ~= 32 then util.fail(NAME, opt, "must be {SHA256} followed by 64 hex digits") end
      if not util.libcrypto() then util.fail(NAME, opt, "uses {SHA256}, which needs libcrypto (not found)") end
      out[name] = { hash = digest }
      hashed = true
    else
      out[name] = { plain = pw }
    end
    n = n + 1
  end
  if n == 0 then util.fail(NAME, "users", "must not be empty") end
  -- unknown users are checked against this, so they take as long as known ones
  local dummy = hashed and { hash = sha256("moonring dummy") } or { plain = "moonring dummy password" }
  return out, dummy
end

-- The user name if `authorization` carries valid credentials, else nil.
local function authenticate(users, dummy, authorization)
  local token = match(authorization, "^[ \t]*[Bb][Aa][Ss][Ii][Cc][ \t]+([^ \t]+)[ \t]*$")
  if not token then return nil end
  local cred = b64decode(token)
  if not cred then return nil end
  local colon = find(cred, ":", 1, true)
  if not colon then return nil end
  local user, pw = sub(cred, 1, colon - 1), sub(cred, colon + 1)
  local entry = users[user]
  local known = entry ~= nil
  entry = entry or dummy
  local ok
  if entry.hash then
    ok = secure_eq(sha256(pw), entry.hash)
  else
    ok = secure_eq(pw, entry.plain)
  end
  if ok and known then return user end
  return nil
end

return function(opts)
  opts = util.options(NAME, opts, { "users", "realm", "keep", "user_header" })
  local users, dummy = compile_users(opts.users)
  local realm = util.check_type(NAME, "realm", opts.realm, "string", true) or "Restricted"
  if find(realm, '["\\%c]') then util.fail(NAME, "realm", "must not contain quotes, backslashes or control characters") end
  local keep = util.check_type(NAME, "keep", opts.keep, "boolean", true) or false
  local user_header = opts.user_header and util.check_header_name(NAME, "user_header", opts.user_header)
  local challenge = { ["WWW-Authenticate"] = 'Basic realm="' .. realm .. '", charset="UTF-8"',
    ["Content-Type"] = "text/plain; charset=utf-8" }

  return {
    on_request = function(req, ctx)
      local authorization = req:header("authorization")
      local user = authorization and authenticate(users, dummy, authorization)
      if not user then
        req:respond(401, "Unauthorized\n", challenge)
        return
      end
      ctx.user = user
      if not keep then req:del_header("authorization") end
      if user_header then req:set_header(user_header, user) end
    end,
  }
end
