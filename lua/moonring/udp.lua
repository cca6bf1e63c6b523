-- moonring.udp(): UDP cosockets in the style of OpenResty's ngx.socket.udp (statsd, syslog, DNS
-- clients), on the worker's loop (src/lua/udp.c). setpeername and receive park the calling
-- coroutine; send never waits (a datagram is taken whole by the kernel or refused).
local ffi = require "ffi"
local moonring = require "moonring"
local base = require "moonring.base"

ffi.cdef [[
typedef struct mr_udp mr_udp_t;
mr_udp_t *mr_udp_new(void);
int mr_udp_peer(mr_udp_t *u, const char *host, size_t hlen, int port, int timeout_ms, void *waker);
int mr_udp_send(mr_udp_t *u, const char *p, size_t n);
int mr_udp_recv(mr_udp_t *u, int timeout_ms, void *waker);
int mr_udp_result(mr_udp_t *u, const char **p);
void mr_udp_close(mr_udp_t *u);
void mr_udp_set_waker(mr_udp_t *u, void *waker);
const char *mr_udp_error(mr_udp_t *u);
]]

local C = ffi.C
local ffi_string = ffi.string
local OK, AGAIN = base.OK, base.AGAIN
local pp = ffi.new("const char *[1]")
local DEFAULT_TIMEOUT = 60000

local M = {}
local methods = {}
local mt = { __index = methods }

local function owner_of(fn)
  local o = moonring._cur
  if not o or coroutine.running() == nil then
    error("udp:" .. fn .. " can only be called from a request phase or a timer callback (not at load time)", 3)
  end
  return o
end

local function errstr(u, rc)
  return base.errstr(rc) and (rc == base.TIMEOUT or rc == base.CLOSED or rc == base.REFUSED or rc == base.NOMEM)
    and base.errstr(rc) or ffi_string(C.mr_udp_error(u))
end

local function finish(u, rc)
  if rc ~= AGAIN and rc ~= OK then return rc end
  rc = C.mr_udp_result(u, pp)
  while rc == AGAIN do
    moonring._yield("io")
    rc = C.mr_udp_result(u, pp)
  end
  return rc
end

function M.udp()
  return setmetatable({ timeout = DEFAULT_TIMEOUT }, mt)
end

function methods.settimeout(self, ms)
  if ms ~= nil and (type(ms) ~= "number" or ms < 0) then error("udp:settimeout(ms): ms must be a non-negative number", 2) end
  self.timeout = ms and math.max(1, math.floor(ms)) or DEFAULT_TIMEOUT
end

local function drop(self)
  local u = self.u
  if not u then return end
  self.u = nil
  if self.owner and self.owner.socks then self.owner.socks[self] = nil end
  self.owner = nil
  C.mr_udp_close(u)
end

-- Sets (or changes) the peer: 1, or nil and an error. "unix:" paths are not supported.
function methods.setpeername(self, host, port)
  if type(host) ~= "string" or host == "" then error("udp:setpeername(host, port): host must be a non-empty string", 2) end
  if host:sub(1, 5) == "unix:" then return nil, "unix domain sockets are not supported" end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then error("udp:setpeername(host, port): port must be 1-65535", 2) end
  local o = owner_of("setpeername")
  if self.u and self.owner ~= o then error("udp: this socket belongs to another request or timer", 2) end
  if not self.u then
    local u = C.mr_udp_new()
    if u == nil then return nil, "sockets are only available on a serving worker" end
    self.u, self.owner = u, o
    local socks = o.socks
    if not socks then socks = {}; o.socks = socks end
    socks[self] = true
  end
  local u = self.u
  local rc = finish(u, C.mr_udp_peer(u, host, #host, port, self.timeout, o.waker))
  if rc < 0 then
    local err = errstr(u, rc)
    drop(self)
    return nil, err .. (rc == base.DECLINED and (" (" .. host .. ")") or "")
  end
  return 1
end

-- Sends one datagram (a string, a number or an array of them): 1, or nil and an error.
function methods.send(self, data)
  local t = type(data)
  if t == "table" then
    local parts = {}
    for i = 1, #data do parts[i] = tostring(data[i]) end
    data = table.concat(parts)
  elseif t == "number" then
    data = tostring(data)
  elseif t ~= "string" then
    error("udp:send(data): data must be a string, a number or an array of strings", 2)
  end
  local u = self.u
  if not u then return nil, base.ERR_CLOSED end
  local rc = C.mr_udp_send(u, data, #data)
  if rc ~= OK then return nil, errstr(u, rc) end
  return 1
end

-- Receives one datagram (at most `size` bytes of it, default 8192): the data, or nil and an
-- error ("timeout" leaves the socket usable).
function methods.receive(self, size)
  if size ~= nil and (type(size) ~= "number" or size < 1) then error("udp:receive(size): size must be a positive number", 2) end
  local u = self.u
  if not u then return nil, base.ERR_CLOSED end
  local o = owner_of("receive")
  if self.owner ~= o then error("udp: this socket belongs to another request or timer", 2) end
  local rc = finish(u, C.mr_udp_recv(u, self.timeout, o.waker))
  if rc < 0 then return nil, errstr(u, rc) end
  return ffi_string(pp[0], math.min(rc, size or 8192))
end

function methods.close(self)
  if not self.u then return nil, base.ERR_CLOSED end
  drop(self)
  return 1
end

function methods._rewake(self, waker)
  if self.u then C.mr_udp_set_waker(self.u, waker) end
end

return M
