-- ngx.socket.tcp and ngx.socket.udp: moonring's cosockets with what OpenResty's add on top
-- (receiveany, setoption, nested tables in send, the send_status_req argument refused).
-- Difference kept on purpose: sslhandshake verifies the peer unless ssl_verify == false
-- (OpenResty's default is off); see docs/ngx.md.
local tcpmod = require "moonring.tcp"
local udpmod = require "moonring.udp"

local M = {}
local base_methods = tcpmod._methods
local methods = setmetatable({}, { __index = base_methods })
local mt = { __index = methods }

function M.tcp() return setmetatable(tcpmod.tcp(), mt) end

local function flatten(v, out)
  local t = type(v)
  if t == "table" then
    for i = 1, #v do flatten(v[i], out) end
  elseif t == "string" then
    out[#out + 1] = v
  elseif t == "number" or t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif v == nil then
    error("bad argument #1 to 'send' (nil in the data)", 4)
  else
    error("bad argument #1 to 'send' (string, number, boolean or table expected, got " .. t .. ")", 4)
  end
  return out
end

function methods.send(self, data)
  if type(data) == "table" then data = table.concat(flatten(data, {})) end
  return base_methods.send(self, data)
end

function methods.connect(self, host, port, opts)
  if type(host) == "string" and host:sub(1, 5) == "unix:" then return nil, "unix domain sockets are not supported" end
  if opts ~= nil and type(opts) == "table" and (opts.backlog or opts.pool_size) then
    -- OpenResty's connection-pool queueing options: moonring's pool does not queue connects
    local o2 = {}
    for k, v in pairs(opts) do if k ~= "backlog" and k ~= "pool_size" then o2[k] = v end end
    opts = o2
  end
  return base_methods.connect(self, host, port, opts)
end

-- At most max bytes of what is buffered, or of one read from the socket.
function methods.receiveany(self, max)
  if type(max) ~= "number" or max < 1 then error("bad argument #2 to 'receiveany' (positive number expected)", 2) end
  local buf = self.buf
  if #buf == 0 then
    local data, err = tcpmod._fill(self)
    if not data then return nil, err end
    buf = data
  end
  self.buf = buf:sub(max + 1)
  return buf:sub(1, max)
end

function methods.sslhandshake(self, session, server_name, verify, send_status_req)
  if send_status_req then return nil, "OCSP status requests are not supported" end
  return base_methods.sslhandshake(self, session, server_name, verify)
end

function methods.setoption() return true end
function methods.getfd() return nil end

function M.udp() return udpmod.udp() end

return M
