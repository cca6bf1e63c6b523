-- `require "resty.core"` for OpenResty code on moonring (lua = { ngx = true }). On OpenResty it
-- replaces the ngx.* API by FFI versions; moonring's ngx layer is already FFI-based, so this
-- only loads the shims libraries expect to find. Debian's lua-resty-core (which needs nginx's
-- own C functions) is shadowed by these files because moonring's lua/ comes first on the path.
if type(ngx) ~= "table" then
  error("resty.core needs the OpenResty layer: set lua = { ngx = true } in the config", 2)
end
local base = require "resty.core.base"
for _, m in ipairs({ "uri", "hash", "base64", "regex", "exit", "shdict", "var", "ctx", "misc", "request",
                     "response", "time", "worker", "phase", "ndk", "socket", "param", "coroutine", "utils" }) do
  require("resty.core." .. m)
end
return { version = base.version }
