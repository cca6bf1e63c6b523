-- moonring.http.request{ method, url, headers, body, timeout, ... }: an HTTP/1.1 client over
-- moonring.tcp, so it runs on the worker's loop and parks only the calling coroutine.
-- Connections are kept alive in the worker's cosocket pool (keyed by host:port, and for https
-- by "https://host:port" plus the TLS server name and verification). Responses: Content-Length,
-- chunked, or delimited by close; the body is bounded (lua.http_max_response or
-- opts.max_body_size). https:// verifies the server (opts.ssl_verify = false opts out) and
-- resumes the last TLS session to the same host:port on new connections.
local moonring = require "moonring"
local base = require "moonring.base"
local tcp = require("moonring.tcp").tcp

local M = {}
local concat = table.concat

local DEFAULT_MAX = 16 * 1024 * 1024
local MAX_HEADER_BYTES = 64 * 1024
local MAX_HEADERS = 100

local function max_response()
  local rt = package.loaded["moonring.runtime"]
  local l = rt and rt.config and rt.config.lua
  return l and l.http_max_response or DEFAULT_MAX
end

-- "http[s]://host[:port]/path?query" -> host, port, target, authority, tls
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "bad url (expected http://host[:port]/path): " .. url end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then return nil, "unsupported url scheme '" .. scheme .. "'" end
  local authority, target = rest:match("^([^/?#]*)([^#]*)")
  if authority == "" or authority:find("@", 1, true) then return nil, "bad url host: " .. url end
  if target == "" then target = "/" elseif target:sub(1, 1) == "?" then target = "/" .. target end
  if target:find("[%s%z]") then return nil, "bad url path: " .. url end
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^(%b[])(.*)$")
    if not host then return nil, "bad url host: " .. url end
    host = host:sub(2, -2)
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  if port ~= "" then
    port = tonumber(port:match("^:(%d+)$"))
    if not port or port < 1 or port > 65535 then return nil, "bad url port: " .. url end
  else
    port = scheme == "https" and 443 or 80
  end
  return host, port, target, authority, scheme == "https"
end

-- Last TLS session per pool key (this VM, so this worker and generation): new connections
-- resume it. Bounded: cleared when it grows past SESSIONS_MAX hosts.
local sessions, nsessions = {}, 0
local SESSIONS_MAX = 256

local function check_header(k, v)
  k, v = tostring(k), tostring(v)
  if not k:find("^[!#$%%&'*+.^_`|~%w-]+$") then error("moonring.http.request: bad header name " .. k, 4) end
  if v:find("[\r\n%z]") then error("moonring.http.request: header " .. k .. " has CR, LF or NUL in its value", 4) end
  return k, v
end

local function read_head(sock, res)
  sock.max_line = 16 * 1024
  local total = 0
  while true do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local ver, status, reason = line:match("^HTTP/1%.(%d) (%d%d%d) ?(.*)$")
    if not ver then return nil, "bad status line from the server" end
    res.status, res.reason, res.minor = tonumber(status), reason, tonumber(ver)
    local h, n = {}, 0
    while true do
      line, err = sock:receive("*l")
      if not line then return nil, err end
      if line == "" then break end
      total = total + #line
      n = n + 1
      if total > MAX_HEADER_BYTES or n > MAX_HEADERS then return nil, "response headers too large" end
      local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
      if not name then return nil, "bad response header line" end
      name = name:lower()
      local old = h[name]
      h[name] = old and (old .. ", " .. value) or value
    end
    res.headers = h
    -- 1xx interim responses (100 Continue, 103 Early Hints) precede the real one
    if res.status >= 200 or res.status == 101 then break end
  end
  sock.max_line = nil
  return true
end

local function read_chunked(sock, max)
  local parts, total = {}, 0
  sock.max_line = 4096
  while true do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size line from the server" end
    if size == 0 then
      repeat
        line, err = sock:receive("*l")
        if not line then return nil, err end
      until line == ""
      break
    end
    total = total + size
    if total > max then return nil, "response too large" end
    local data
    data, err = sock:receive(size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    local crlf
    crlf, err = sock:receive(2)
    if crlf ~= "\r\n" then return nil, err or "bad chunk framing from the server" end
  end
  sock.max_line = nil
  return concat(parts)
end

local function read_until_close(sock, max)
  local parts, total = {}, 0
  while true do
    local data, err, partial = sock:receive(16384)
    data = data or partial
    if data and #data > 0 then
      total = total + #data
      if total > max then return nil, "response too large" end
      parts[#parts + 1] = data
    end
    if err == base.ERR_CLOSED then return concat(parts) end
    if err then return nil, err end
  end
end

local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true, TRACE = true }

local function attempt(o, fresh)
  local sock = tcp()
  sock:settimeout(o.timeout_ms)
  local ok, err = sock:connect(o.host, o.port, { pool = fresh and o.pool .. "#fresh" or o.pool })
  if not ok then return nil, err end
  local reused = (sock:getreusedtimes() or 0) > 0
  if o.tls then
    -- The engine sends no SNI for an IP literal and checks it against the IP SANs instead.
    -- A resumed session skips verification: sessions are kept apart by ssl_verify too.
    local skey = o.ssl_verify and o.pool or o.pool .. "#noverify"
    local sess
    sess, err = sock:sslhandshake(sessions[skey], o.host, o.ssl_verify)
    if not sess then return nil, err end
    if not reused then
      if not sessions[skey] then
        nsessions = nsessions + 1
        if nsessions > SESSIONS_MAX then sessions, nsessions = {}, 1 end
      end
      sessions[skey] = sess
    end
  end
  ok, err = sock:send(o.wire)
  if not ok then sock:close(); return nil, err, reused end
  local res = {}
  ok, err = read_head(sock, res)
  if not ok then sock:close(); return nil, err, reused end
  local h = res.headers
  local body
  local delimited = true
  local max = o.max_body
  if o.method == "HEAD" or res.status == 204 or res.status == 304 or res.status < 200 then
    body = ""
  elseif h["transfer-encoding"] then
    if not h["transfer-encoding"]:lower():find("chunked%s*$") then
      sock:close()
      return nil, "unsupported transfer-encoding from the server: " .. h["transfer-encoding"]
    end
    body, err = read_chunked(sock, max)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"]:match("^%d+$"))
    if not n then sock:close(); return nil, "bad content-length from the server" end
    if n > max then sock:close(); return nil, "response too large" end
    body, err = n == 0 and "" or sock:receive(n)
  else
    delimited = false
    body, err = read_until_close(sock, max)
  end
  if not body then sock:close(); return nil, err end
  res.body = body
  local conn = (h.connection or ""):lower()
  local keep = o.keepalive and delimited and not conn:find("close", 1, true) and
    (res.minor == 1 or conn:find("keep-alive", 1, true) ~= nil) and res.status ~= 101
  if keep and not fresh then sock:setkeepalive(o.keepalive_timeout, o.pool_size) else sock:close() end
  res.minor = nil
  return res
end

-- Returns res = { status, reason, headers (lowercase names), body } or nil, err.
function M.request(opts)
  if type(opts) ~= "table" then error("moonring.http.request(opts): opts must be a table", 2) end
  if type(opts.url) ~= "string" then error("moonring.http.request: opts.url must be a string", 2) end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not method:find("^%u+$") then
    error("moonring.http.request: opts.method must be an upper-case method name like \"GET\"", 2)
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then error("moonring.http.request: opts.body must be a string", 2) end
  local timeout = opts.timeout or 60
  if type(timeout) ~= "number" or timeout <= 0 then error("moonring.http.request: opts.timeout must be a positive number of seconds", 2) end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then error("moonring.http.request: opts.headers must be a table", 2) end
  local max = opts.max_body_size or max_response()
  if type(max) ~= "number" or max < 0 then error("moonring.http.request: opts.max_body_size must be a number of bytes", 2) end

  if opts.ssl_verify ~= nil and type(opts.ssl_verify) ~= "boolean" then
    error("moonring.http.request: opts.ssl_verify must be a boolean", 2)
  end
  local host, port, target, authority, tls = parse_url(opts.url)
  if not host then return nil, port end
  local o = {
    host = host, port = port, method = method, max_body = max, tls = tls, ssl_verify = opts.ssl_verify ~= false,
    pool = (tls and "https://" or "") .. host .. ":" .. port,
    timeout_ms = math.ceil(timeout * 1000),
    keepalive = opts.keepalive ~= false,
    keepalive_timeout = math.floor((opts.keepalive_timeout or 60) * 1000),
    pool_size = opts.pool_size or 30,
  }
  local lines = { method, " ", target, " HTTP/1.1\r\n" }
  local has = {}
  for k, v in pairs(opts.headers or {}) do
    k, v = check_header(k, v)
    local lk = k:lower()
    if lk ~= "content-length" and lk ~= "transfer-encoding" and lk ~= "connection" then
      has[lk] = true
      lines[#lines + 1] = k .. ": " .. v .. "\r\n"
    end
  end
  if not has.host then lines[#lines + 1] = "Host: " .. authority .. "\r\n" end
  if not has["user-agent"] then lines[#lines + 1] = "User-Agent: moonring\r\n" end
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    lines[#lines + 1] = "Content-Length: " .. #(body or "") .. "\r\n"
  end
  if not o.keepalive then lines[#lines + 1] = "Connection: close\r\n" end
  lines[#lines + 1] = "\r\n"
  if body then lines[#lines + 1] = body end
  o.wire = concat(lines)

  local res, err, reused = attempt(o, false)
  -- A kept-alive connection the server closed meanwhile: try once on a new one.
  if not res and reused and (err == base.ERR_CLOSED or err == base.ERR_RESET) and IDEMPOTENT[method] then
    res, err = attempt(o, true)
  end
  return res, err
end

return M
