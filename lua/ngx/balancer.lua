-- ngx.balancer for OpenResty code on moonring. moonring has no balancer phase: a peer set from
-- on_request (access) becomes the request's upstream (req:set_upstream("host:port")); the
-- retry settings are moonring's own (the upstream's `tries`), so set_more_tries only answers.
local moonring = require "moonring"
local M = { version = "0.1.25" }

function M.set_current_peer(host, port)
  local o = moonring._cur
  if not (o and o.req) then return nil, "no request found" end
  if port == nil then
    local h, p = tostring(host):match("^(.*):(%d+)$")
    if not h then return nil, "no port in the peer" end
    host, port = h, p
  end
  if tostring(host):find(":", 1, true) and not tostring(host):find("^%[") then host = "[" .. host .. "]" end
  return o.req:set_upstream(host .. ":" .. port)
end

function M.set_more_tries() return true end
function M.get_last_failure() return nil end
function M.set_timeouts() return true end
function M.recreate_request() return true end
function M.enable_keepalive() return true end

return M
