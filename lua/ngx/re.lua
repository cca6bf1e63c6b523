-- ngx.re (lua-resty-core's module: split and opt) for OpenResty code on moonring.
local re = require "moonring.re"
return { version = "0.1.25", split = re.split, opt = re.opt }
