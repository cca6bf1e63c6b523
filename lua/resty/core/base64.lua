-- resty.core.base64 for OpenResty code on moonring: the ngx layer (lua/moonring/ngx.lua) already
-- provides what this module installs on OpenResty; it exists so that requiring it succeeds.
return { version = require("resty.core.base").version }
