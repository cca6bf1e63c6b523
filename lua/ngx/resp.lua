-- ngx.resp for OpenResty code on moonring: add_header (and get_headers, as ngx.resp has it).
local moonring = require "moonring"
return {
  version = "0.1.25",
  add_header = function(name, value)
    local o = moonring._cur
    if not (o and o.res and o.phase and o.phase >= 3) then
      local h = ngx.header[name]
      if h then ngx.header[name] = { h, value } else ngx.header[name] = value end
      return
    end
    o.res:add_header((name:gsub("_", "-")), value)
  end,
  get_headers = function(...) return ngx.resp.get_headers(...) end,
}
