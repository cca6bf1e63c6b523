-- ngx.req (lua-resty-core's module: add_header) for OpenResty code on moonring.
local moonring = require "moonring"
return {
  version = "0.1.25",
  add_header = function(name, value)
    local o = moonring._cur
    if not (o and o.req) then error("API disabled in the current context", 2) end
    if type(value) == "table" then
      for i = 1, #value do o.req:add_header((name:gsub("_", "-")), value[i]) end
      return
    end
    o.req:add_header((name:gsub("_", "-")), value)
  end,
}
