-- moonring.tcp(): cosockets in the style of OpenResty's ngx.socket.tcp, on the worker's own
-- event loop (src/lua/cosock.c). Every operation that waits parks the calling coroutine (a
-- request phase or a timer) and resumes it when the loop completes the operation; the worker
-- keeps serving meanwhile. Buffering and the receive patterns live here; C only moves bytes.
local ffi = require "ffi"
local moonring = require "moonring"
local base = require "moonring.base"

ffi.cdef [[
typedef struct mr_cosock mr_cosock_t;
mr_cosock_t *mr_cosock_new(void);
int mr_cosock_connect(mr_cosock_t *s, const char *host, size_t hlen, int port, int timeout_ms, void *waker);
int mr_cosock_send(mr_cosock_t *s, const char *p, size_t n, int timeout_ms, void *waker);
int mr_cosock_recv(mr_cosock_t *s, int timeout_ms, void *waker);
int mr_cosock_result(mr_cosock_t *s, const char **p);
void mr_cosock_close(mr_cosock_t *s);
void mr_cosock_set_waker(mr_cosock_t *s, void *waker);
int mr_cosock_reused(mr_cosock_t *s);
int mr_cosock_keepalive(mr_cosock_t *s, const char *key, size_t klen, int idle_ms, int pool_size);
mr_cosock_t *mr_cosock_pool_get(const char *key, size_t klen, int tls);
typedef struct mr_cosock_sess mr_cosock_sess_t;
int mr_cosock_sslhandshake(mr_cosock_t *s, void *vm, int verify, const char *sni, mr_cosock_sess_t *reuse,
                           int timeout_ms, void *waker);
mr_cosock_sess_t *mr_cosock_tls_session(mr_cosock_t *s);
void mr_cosock_sess_free(mr_cosock_sess_t *b);
int mr_cosock_tls_reused(mr_cosock_t *s);
const char *mr_cosock_pool_key(mr_cosock_t *s);
const char *mr_cosock_error(mr_cosock_t *s);
]]

local C = ffi.C
local ffi_string = ffi.string
local concat = table.concat
local find, sub, byte = string.find, string.sub, string.byte
local pp = ffi.new("const char *[1]")

local M = {}
local methods = {}
local sock_mt = { __index = methods }

local OK, AGAIN, TIMEOUT, RESET = base.OK, base.AGAIN, base.TIMEOUT, base.RESET
local ERR_CLOSED = base.ERR_CLOSED

-- Failures OpenResty has its own words for; C describes any other one (mr_cosock_error: "broken
-- pipe", "host not found", a TLS verification failure...).
local ERRORS = {
  [TIMEOUT] = base.ERR_TIMEOUT, [base.CLOSED] = ERR_CLOSED, [base.REFUSED] = base.ERR_REFUSED,
  [RESET] = base.ERR_RESET, [base.NOMEM] = base.ERR_NOMEM,
}

-- The message for failure code rc of socket s; call it before closing s.
local function errstr(s, rc)
  return ERRORS[rc] or ffi_string(C.mr_cosock_error(s))
end

local DEFAULT_TIMEOUT = 60000

function M.tcp()
  return setmetatable({ buf = "", ct = DEFAULT_TIMEOUT, st = DEFAULT_TIMEOUT, rt = DEFAULT_TIMEOUT }, sock_mt)
end

-- The owner running now (its entry coroutine, a light thread of it, or a coroutine of the
-- script's own that it resumed: moonring.thread parks them all).
local function owner_of(fn)
  local o = moonring._cur
  if not o or coroutine.running() == nil then
    error("sock:" .. fn .. " can only be called from a request phase or a timer callback (not at load time)", 3)
  end
  return o
end

-- The socket must be used by the owner that connected it: another owner's end would close it
-- under a coroutine parked on it.
local function live(self, fn)
  local s = self.s
  if not s then return nil end
  local o = owner_of(fn)
  if self.owner ~= o then
    error("sock:" .. fn .. ": this socket belongs to another request or timer", 3)
  end
  return s, o
end

-- Parks until the operation submitted with code rc completes; returns its result (a count >= 0,
-- or a failure code < 0).
-- A wake-up may be meant for another coroutine of the same owner: park again until done.
local function finish(s, rc)
  if rc ~= AGAIN and rc ~= OK then return rc end
  rc = C.mr_cosock_result(s, pp)
  while rc == AGAIN do
    moonring._yield("io")
    rc = C.mr_cosock_result(s, pp)
  end
  return rc
end

local function drop(self)
  local s = self.s
  if not s then return end
  self.s = nil
  self.buf = ""
  self.tls_key, self.tls_fresh = nil, nil
  if self.owner and self.owner.socks then self.owner.socks[self] = nil end
  self.owner = nil
  C.mr_cosock_close(s)
end

local function adopt(self, s, o)
  self.s = s
  self.owner = o
  local socks = o.socks
  if not socks then socks = {}; o.socks = socks end
  socks[self] = true
end

function methods.connect(self, host, port, opts)
  if type(host) ~= "string" or host == "" then error("sock:connect(host, port): host must be a non-empty string", 2) end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then
    error("sock:connect(host, port): port must be an integer from 1 to 65535", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("sock:connect: opts must be a table", 2) end
  local o = owner_of("connect")
  if self.s then drop(self) end
  local key = opts and opts.pool or (host .. ":" .. port)
  if type(key) ~= "string" then error("sock:connect: opts.pool must be a string", 2) end
  self.key, self.host, self.port = key, host, port
  -- An idle plain connection first, else one that did a TLS handshake (sslhandshake then
  -- returns at once if its server name and verification match, see there).
  local s = C.mr_cosock_pool_get(key, #key, 0)
  if s ~= nil then
    adopt(self, s, o)
    return 1
  end
  if not (opts and opts._plain) then
    s = C.mr_cosock_pool_get(key, #key, 1)
    if s ~= nil then
      adopt(self, s, o)
      self.tls_key = ffi_string(C.mr_cosock_pool_key(s))
      self.tls_fresh = true
      return 1
    end
  end
  s = C.mr_cosock_new()
  if s == nil then return nil, "sockets are only available on a serving worker" end
  adopt(self, s, o)
  local rc = finish(s, C.mr_cosock_connect(s, host, #host, port, self.ct, o.waker))
  if rc < 0 then
    local err = errstr(s, rc)
    -- C's own descriptions (a name that did not resolve, an unreachable network) name the host
    if not ERRORS[rc] then err = err .. " (" .. host .. ")" end
    drop(self)
    return nil, err
  end
  return 1
end

function methods.send(self, data)
  local t = type(data)
  if t == "table" then
    local parts = {}
    for i = 1, #data do parts[i] = tostring(data[i]) end
    data = concat(parts)
  elseif t == "number" then
    data = tostring(data)
  elseif t ~= "string" then
    error("sock:send(data): data must be a string, a number or an array of strings", 2)
  end
  local s, o = live(self, "send")
  if not s then return nil, ERR_CLOSED end
  self.tls_fresh = nil
  local rc = finish(s, C.mr_cosock_send(s, data, #data, self.st, o.waker))
  if rc < 0 then
    local err = errstr(s, rc)
    drop(self) -- even on a timeout: part of the data may have left, the stream is out of step
    return nil, err
  end
  return #data
end

-- Reads once more from the socket: the bytes, or nil and an error ("closed" at EOF).
local function fill(self)
  local s, o = live(self, "receive")
  if not s then return nil, ERR_CLOSED end
  self.tls_fresh = nil
  local rc = finish(s, C.mr_cosock_recv(s, self.rt, o.waker))
  if rc > 0 then return ffi_string(pp[0], rc) end
  if rc == 0 then drop(self); return nil, ERR_CLOSED end
  local err = errstr(s, rc)
  if rc ~= TIMEOUT then drop(self) end -- a read timeout leaves the socket usable
  return nil, err
end

local function receive_line_slow(self)
  local buf = self.buf
  local parts, np, have = nil, 0, 0
  local max = self.max_line
  while true do
    local i = buf:find("\n", 1, true)
    if i then
      local line = buf:sub(1, i - 1)
      self.buf = buf:sub(i + 1)
      if parts then parts[np + 1] = line; line = concat(parts) end
      if line:byte(-1) == 13 then line = line:sub(1, -2) end
      return line
    end
    parts = parts or {}
    np = np + 1
    parts[np] = buf
    have = have + #buf
    if max and have > max then drop(self); return nil, "line too long" end
    self.buf = ""
    local data, err = fill(self)
    if not data then return nil, err, concat(parts) end
    buf = data
  end
end

-- The common case, a line already buffered, has no loop so that it JIT-compiles inside the
-- caller's loop (an inner loop would abort the caller's root trace).
local function receive_line(self)
  local buf = self.buf
  local i = find(buf, "\n", 1, true)
  if not i then return receive_line_slow(self) end
  self.buf = sub(buf, i + 1)
  if i > 1 and byte(buf, i - 1) == 13 then return sub(buf, 1, i - 2) end
  return sub(buf, 1, i - 1)
end

local function receive_n(self, n)
  local buf = self.buf
  if #buf >= n then
    self.buf = buf:sub(n + 1)
    return buf:sub(1, n)
  end
  local parts, have = { buf }, #buf
  self.buf = ""
  while have < n do
    local data, err = fill(self)
    if not data then return nil, err, concat(parts) end
    parts[#parts + 1] = data
    have = have + #data
  end
  local all = concat(parts)
  self.buf = all:sub(n + 1)
  return all:sub(1, n)
end

local function receive_all(self)
  local parts = { self.buf }
  self.buf = ""
  while true do
    local data, err = fill(self)
    if not data then
      if err == ERR_CLOSED then return concat(parts) end
      return nil, err, concat(parts)
    end
    parts[#parts + 1] = data
  end
end

-- pattern: "*l" (a line without its CRLF), "*a" (everything until the peer closes), or a byte
-- count. Errors: nil, err, partial data.
function methods.receive(self, pattern)
  if pattern == nil or pattern == "*l" or pattern == "l" then return receive_line(self) end
  if pattern == "*a" or pattern == "a" then return receive_all(self) end
  local n = tonumber(pattern)
  if not n or n < 0 or n % 1 ~= 0 then
    error("sock:receive(pattern): pattern must be \"*l\", \"*a\" or a non-negative byte count", 2)
  end
  if n == 0 then return "" end
  return receive_n(self, n)
end

-- Returns an iterator reading up to `delim` (OpenResty's receiveuntil). Called without a size it
-- returns everything before the delimiter and consumes it; called with a size it returns at most
-- that many bytes at a time, then nil once the delimiter was consumed.
function methods.receiveuntil(self, delim, opts)
  if type(delim) ~= "string" or delim == "" then error("sock:receiveuntil(delimiter): delimiter must be a non-empty string", 2) end
  local inclusive = opts and opts.inclusive
  local dl = #delim
  local ended = false
  -- The delimiter is in buf at i, within size: hand out what precedes it (and it, if inclusive).
  local function found(buf, i, size)
    local data = sub(buf, 1, inclusive and i + dl - 1 or i - 1)
    self.buf = sub(buf, i + dl)
    if size then
      if data == "" then return nil end
      ended = true
    end
    return data
  end
  local function slow(size)
    local buf = self.buf
    local from = 1
    while true do
      local i = buf:find(delim, from, true)
      if i then
        if size and i - 1 > size then
          self.buf = buf:sub(size + 1)
          return buf:sub(1, size)
        end
        return found(buf, i, size)
      end
      if size and #buf - (dl - 1) >= size then
        self.buf = buf:sub(size + 1)
        return buf:sub(1, size)
      end
      from = math.max(1, #buf - dl + 2)
      self.buf = ""
      local data, err = fill(self)
      if not data then return nil, err, buf end
      buf = buf .. data
    end
  end
  return function(size)
    if size ~= nil and (type(size) ~= "number" or size < 1) then error("reader(size): size must be a positive number", 2) end
    if ended then ended = false; return nil end
    -- fast path (no loop, see receive_line): the delimiter is buffered
    local buf = self.buf
    local i = find(buf, delim, 1, true)
    if not i or (size and i - 1 > size) then return slow(size) end
    return found(buf, i, size)
  end
end

local function check_ms(fn, v)
  if v == nil then return nil end
  if type(v) ~= "number" or v < 0 or v ~= v then error("sock:" .. fn .. ": timeouts are non-negative numbers of milliseconds", 3) end
  return math.max(1, math.floor(v))
end

function methods.settimeout(self, ms)
  ms = check_ms("settimeout(ms)", ms) or DEFAULT_TIMEOUT
  self.ct, self.st, self.rt = ms, ms, ms
end

function methods.settimeouts(self, c, s, r)
  self.ct = check_ms("settimeouts(connect, send, read)", c) or self.ct
  self.st = check_ms("settimeouts(connect, send, read)", s) or self.st
  self.rt = check_ms("settimeouts(connect, send, read)", r) or self.rt
end

function methods.close(self)
  if not self.s then return nil, ERR_CLOSED end
  drop(self)
  return 1
end

-- Puts the connection in the worker's pool (keyed by host:port, or connect's opts.pool) for
-- idle_ms (default 60 s, 0 = no limit), at most pool_size (default 30) per key.
function methods.setkeepalive(self, idle_ms, pool_size)
  if idle_ms ~= nil and (type(idle_ms) ~= "number" or idle_ms < 0) then error("sock:setkeepalive(idle_ms, pool_size): idle_ms must be a non-negative number", 2) end
  if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then error("sock:setkeepalive(idle_ms, pool_size): pool_size must be a positive number", 2) end
  local s = live(self, "setkeepalive")
  if not s then return nil, ERR_CLOSED end
  if #self.buf > 0 then drop(self); return nil, "unread data in buffer" end
  local key = self.tls_key or self.key
  self.s = nil
  if self.owner.socks then self.owner.socks[self] = nil end
  self.owner = nil
  local rc = C.mr_cosock_keepalive(s, key, #key, math.floor(idle_ms or 60000), math.floor(pool_size or 30))
  if rc < 0 then
    local err = errstr(s, rc)
    C.mr_cosock_close(s)
    return nil, err
  end
  return 1
end

local sess_t = ffi.typeof("mr_cosock_sess_t *")

-- OpenResty's sslhandshake(reused_session, server_name, ssl_verify). Differences: verification
-- is on unless ssl_verify == false (lua.ssl_trusted_certificate or the system store); without a
-- server_name nothing is sent as SNI and only the chain is verified, not a name. Returns a
-- session (pass it to a later handshake to resume), true when reused_session == false, or nil
-- and an error. The handshake is bounded by the connect timeout.
function methods.sslhandshake(self, session, server_name, verify)
  if session ~= nil and session ~= false and not (type(session) == "cdata" and ffi.istype(sess_t, session)) then
    error("sock:sslhandshake(session, server_name, verify): session must be a session from an earlier sslhandshake, nil or false", 2)
  end
  if server_name ~= nil and type(server_name) ~= "string" then
    error("sock:sslhandshake(session, server_name, verify): server_name must be a string", 2)
  end
  if server_name and (#server_name > 253 or server_name:find("[%z\n]")) then
    error("sock:sslhandshake: bad server_name", 2)
  end
  if verify ~= nil and type(verify) ~= "boolean" then
    error("sock:sslhandshake(session, server_name, verify): verify must be a boolean", 2)
  end
  local s, o = live(self, "sslhandshake")
  if not s then return nil, ERR_CLOSED end
  local tls_key = self.key .. "\ntls\n" .. (server_name or "") .. "\n" .. (verify == false and "0" or "1")
  if self.tls_key then
    -- Already TLS (taken from the pool, or a second call): OpenResty returns at once. A pooled
    -- connection made for another name or trust is not used: a new one is made instead.
    if self.tls_key ~= tls_key and self.tls_fresh then
      local ok, err = self:connect(self.host, self.port, { pool = self.key, _plain = true })
      if not ok then return nil, err end
      return self:sslhandshake(session, server_name, verify)
    end
    self.tls_fresh = nil
    if session == false then return true end
    return ffi.gc(C.mr_cosock_tls_session(s), C.mr_cosock_sess_free)
  end
  local rt = package.loaded["moonring.runtime"]
  local rc = finish(s, C.mr_cosock_sslhandshake(s, rt and rt.vm, verify ~= false and 1 or 0, server_name,
    session or nil, self.ct, o.waker))
  if rc < 0 then
    -- otherwise C's words: the engine's reason ("certificate verify failed: ..."), or "TLS is
    -- only available on a serving worker"
    local err = rc == RESET and "handshake failed: connection closed by the server" or errstr(s, rc)
    drop(self)
    return nil, err
  end
  self.tls_key = tls_key
  if session == false then return true end
  return ffi.gc(C.mr_cosock_tls_session(s), C.mr_cosock_sess_free)
end

-- moonring extension: whether the handshake resumed the session passed to sslhandshake.
function methods.ssl_reused(self)
  if not self.s then return nil, ERR_CLOSED end
  return C.mr_cosock_tls_reused(self.s) ~= 0
end

function methods.getreusedtimes(self)
  if not self.s then return nil, ERR_CLOSED end
  return C.mr_cosock_reused(self.s)
end

function methods._rewake(self, waker)
  if self.s then C.mr_cosock_set_waker(self.s, waker) end
end

-- For the OpenResty layer (moonring.ngx.socket): the methods, and one read from the socket.
M._methods = methods
M._fill = fill

return M
